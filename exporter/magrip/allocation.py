"""How many neurons each layer keeps, and which: global ranking or per-layer uniform.

- global (default): all active neurons of all layers are ranked on one axis (the
  scores are median-normalised per layer, so they are comparable) and the best
  `keep_total` survive, except that every layer first keeps its own best
  `min_width` neurons, so no layer is emptied and the model stays a deep network.
- uniform: every layer keeps the same fraction of its original width (largest
  remainder rounding, so the total is exact), chosen by its own ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ALLOCATIONS = ("global", "uniform")
DEFAULT_MIN_FRACTION = 0.1  # min width per layer when none is given: 10 % of its width


def default_min_widths(original_widths: Sequence[int], min_width: int | None) -> list[int]:
    if min_width is None:
        return [max(1, math.ceil(DEFAULT_MIN_FRACTION * w)) for w in original_widths]
    return [min(min_width, w) for w in original_widths]


def uniform_quotas(original_widths: Sequence[int], keep_total: int) -> list[int]:
    """Per-layer keep counts proportional to the widths, summing exactly to keep_total."""
    widths = np.asarray(original_widths, dtype=np.float64)
    exact = keep_total * widths / widths.sum()
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: keep_total - int(quotas.sum())]] += 1
    return [int(q) for q in quotas]


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Indices of the active (finite-score) neurons, best first; ties by index."""
    active = np.flatnonzero(np.isfinite(scores))
    return active[np.argsort(-scores[active], kind="stable")]


def select_keep(
    scores: Sequence[np.ndarray],  # per layer (W,), -inf = already pruned
    keep_total: int,
    allocation: str,
    original_widths: Sequence[int],
    min_widths: Sequence[int],
) -> list[np.ndarray]:
    """Per layer (W,) bool: the neurons to keep, `keep_total` in all."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    ranked = [_ranked(s) for s in scores]
    available = sum(len(r) for r in ranked)
    if not 0 < keep_total <= available:
        raise ValueError(f"cannot keep {keep_total} neurons out of {available} active ones")
    if allocation == "uniform":
        counts = [min(q, len(r)) for q, r in zip(uniform_quotas(original_widths, keep_total),
                                                 ranked)]
    else:
        counts = [min(m, len(r)) for m, r in zip(min_widths, ranked)]
        if sum(counts) > keep_total:
            raise ValueError(
                f"the minimum width per layer ({sum(counts)} neurons in all) exceeds the "
                f"{keep_total} neurons this ratio keeps: lower --min-width or the ratio"
            )
    # Fill what is left (global: all but the reserved minimum; uniform: only what a
    # layer too narrow for its quota could not take) from the best remaining neurons.
    counts = _fill(scores, ranked, counts, keep_total - sum(counts))
    keep = []
    for s, r, n in zip(scores, ranked, counts):
        mask = np.zeros(len(s), dtype=bool)
        mask[r[:n]] = True
        keep.append(mask)
    return keep


def _fill(scores, ranked, counts: list[int], extra: int) -> list[int]:
    if extra <= 0:
        return counts
    layer_of = np.concatenate([np.full(len(r) - n, i) for i, (r, n) in
                               enumerate(zip(ranked, counts))])
    value = np.concatenate([scores[i][r[n:]] for i, (r, n) in enumerate(zip(ranked, counts))])
    best = np.argsort(-value, kind="stable")[:extra]
    counts = list(counts)
    for layer in layer_of[best]:
        counts[int(layer)] += 1
    return counts
