"""Classification metrics in numpy: accuracy, ROC AUC (one-vs-rest for multi-class) and
log loss (mean negative log-likelihood, what `select=val_loss` ranks epochs by).

AUC is MedMNIST's definition: binary tasks score the positive class (column 1);
multi-class tasks average the one-vs-rest AUC of every class that has both
positives and negatives in the labels.
"""

from __future__ import annotations

import numpy as np


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """(N, C) scores, (N,) labels -> fraction with argmax == label."""
    return float((np.argmax(probabilities, axis=1) == labels).mean())


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the average of the ranks they span."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]  # exclusive
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg): P(score of a positive > score of a negative)."""
    positive = positive.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative example")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """(N, C) scores, (N,) labels -> ROC AUC (binary) or macro one-vs-rest AUC."""
    n_classes = probabilities.shape[1]
    if n_classes == 2:
        return binary_auc(probabilities[:, 1], labels == 1)
    per_class = [
        binary_auc(probabilities[:, c], labels == c)
        for c in range(n_classes)
        if 0 < (labels == c).sum() < len(labels)
    ]
    if not per_class:
        raise ValueError("AUC needs labels from at least two classes")
    return float(np.mean(per_class))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels (probabilities clipped at 1e-12)."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": accuracy(probabilities, labels),
        "auc": auc(probabilities, labels),
        "loss": log_loss(probabilities, labels),
    }


