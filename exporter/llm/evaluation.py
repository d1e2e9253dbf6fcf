"""Evaluation of a checkpoint (PyTorch) or a package (onnxruntime, torch-free) on text.

- Perplexity by sliding windows, Hugging Face style: windows of `window` tokens
  advance by `stride`; each window scores only the tokens no earlier window scored,
  with the rest of the window as context. A model whose tokenizer starts texts with
  BOS gets BOS at the start of every window (it was trained that way).
- Zero-shot multiple choice by log-likelihood, lm-eval style: each choice is scored
  as the sum of its tokens' log-probabilities after the context; `acc` picks the
  highest sum, `acc_norm` the highest sum per byte of the choice's text.

Both run on `Scorer`s: the checkpoint's transformers model or the package's
LLMEngine.forward, so one number can be checked on both sides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.text import TokenStream, text_stream
from runtime.errors import E2edgeError
from runtime.llm.tokenizer import Tokenizer


class EvaluationError(E2edgeError):
    """The model or the evaluation data cannot be evaluated as asked."""


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[j, targets[j]] in float64: (S, V), (S,) -> (S,)."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
    return logits[np.arange(len(targets)), targets] - lse


class Scorer:
    """A causal LM that gives next-token log-probabilities of a token sequence."""

    name: str
    context_length: int
    tokenizer: Tokenizer

    def logits(self, ids: Sequence[int]) -> np.ndarray:  # (S, V) float32
        raise NotImplementedError

    def token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """(S - 1,) float64: log p(ids[j] | ids[:j]) for j = 1 .. S-1."""
        ids = np.asarray(ids, dtype=np.int64)
        return log_softmax_at(self.logits(ids)[:-1], ids[1:])


class TorchScorer(Scorer):
    def __init__(self, model, tokenizer: Tokenizer, name: str, context_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = context_length or int(model.config.max_position_embeddings)

    @classmethod
    def from_checkpoint(cls, model_dir: Path) -> TorchScorer:
        """The checkpoint's model, held to the context its package would accept."""
        from exporter.llm.checkpoint import (
            checkpoint_tokenizer,
            load_torch_model,
            read_config,
            read_weights,
        )
        from exporter.llm.decoder_spec import decoder_spec

        config = read_config(Path(model_dir))
        context = decoder_spec(config, read_weights(model_dir, config)).context_length
        return cls(load_torch_model(model_dir), checkpoint_tokenizer(model_dir), str(model_dir),
                   context)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray([ids], dtype=np.int64))).logits[0].numpy()


class PackageScorer(Scorer):
    def __init__(self, package_dir: Path, threads: int = 0):
        from runtime.llm.engine import LLMEngine

        self.engine = LLMEngine.load(package_dir, threads=threads)
        self.tokenizer = self.engine.tokenizer
        self.name = str(package_dir)
        self.context_length = self.engine.context_length

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray([ids], dtype=np.int64)  # (1, S)
        cache = self.engine.empty_cache(capacity=ids.shape[1])  # not the whole context's
        logits, _ = self.engine.forward(ids, 0, cache)
        return logits[0]


def open_scorer(path: str | Path, threads: int = 0) -> Scorer:
    """A package directory (manifest.json) runs on onnxruntime, a checkpoint on PyTorch."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return PackageScorer(path, threads=threads)
    if (path / "config.json").is_file():
        return TorchScorer.from_checkpoint(path)
    raise EvaluationError(f"{path}: neither a model package (manifest.json) nor a Hugging "
                          "Face checkpoint (config.json)")


# ---- perplexity -------------------------------------------------------------------------
@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per scored token
    tokens: int  # tokens scored
    windows: int
    window: int
    stride: int


def perplexity(scorer: Scorer, stream: TokenStream, window: int | None = None,
               stride: int | None = None) -> PerplexityResult:
    """Sliding-window perplexity of a token stream (see the module docstring)."""
    window = window or min(scorer.context_length, 1024)
    bos = stream.bos
    span = window - (bos is not None)  # text tokens per window
    stride = stride or max(1, span // 2)
    if window > scorer.context_length:
        raise EvaluationError(f"window {window} exceeds the model's context length "
                              f"{scorer.context_length}")
    if span < 2 or not 1 <= stride <= span:
        raise EvaluationError(f"need window >= {2 + (bos is not None)} and 1 <= stride <= "
                              f"{span} (window {window}, stride {stride})")
    ids = stream.ids
    if len(ids) < 2:
        raise EvaluationError("the text has fewer than 2 tokens: nothing to score")
    total, count, windows, scored_to = 0.0, 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + span, len(ids))
        chunk = ids[begin:end]
        prefix = [bos] if bos is not None else []
        logprobs = scorer.token_logprobs([*prefix, *chunk.tolist()])  # logprobs[j-1]: token j
        # text token k sits at index k - begin + len(prefix); it is scorable if index >= 1
        first = max(scored_to, begin + (0 if prefix else 1))
        picked = logprobs[first - begin + len(prefix) - 1 : end - begin + len(prefix) - 1]
        total -= float(picked.sum())
        count += len(picked)
        windows += 1
        scored_to = end
        if end == len(ids):
            break
    mean = total / count
    return PerplexityResult(math.exp(mean), mean, count, windows, window, stride)


def text_perplexity(scorer: Scorer, text: str, window: int | None = None,
                    stride: int | None = None, max_tokens: int | None = None
                    ) -> PerplexityResult:
    stream = text_stream(scorer.tokenizer, text)
    if max_tokens:
        stream = TokenStream(stream.ids[:max_tokens], stream.bos)
    return perplexity(scorer, stream, window, stride)


# ---- multiple choice --------------------------------------------------------------------
@dataclass(frozen=True)
class ChoiceRecord:
    context: str
    choices: tuple[str, ...]
    label: int


def read_choice_tasks(path: str | Path) -> list[ChoiceRecord]:
    """lm-eval style JSONL: one {"context": str, "choices": [str, ...], "label": int} a line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                record = ChoiceRecord(raw["context"], tuple(raw["choices"]), raw["label"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvaluationError(f"{path}:{number}: expected a JSON object with context, "
                                      f"choices and label ({type(e).__name__}: {e})") from e
            if not isinstance(record.context, str) or not record.context:
                raise EvaluationError(f"{path}:{number}: context must be a non-empty string")
            if len(record.choices) < 2 or not all(isinstance(c, str) and c
                                                  for c in record.choices):
                raise EvaluationError(f"{path}:{number}: choices must be >= 2 non-empty strings")
            if not isinstance(record.label, int) or not 0 <= record.label < len(record.choices):
                raise EvaluationError(f"{path}:{number}: label must be an index into choices")
            records.append(record)
    if not records:
        raise EvaluationError(f"{path}: no records")
    return records


def choice_logprob(scorer: Scorer, context: str, choice: str) -> tuple[float, int]:
    """(sum of the choice's token log-probabilities after the context, its token count).

    As lm-eval: trailing spaces of the context move to the choice, and the choice's
    tokens are those of encode(context + choice) after encode(context).
    """
    stripped = context.rstrip(" ")
    choice = context[len(stripped):] + choice
    context_ids = scorer.tokenizer.encode(stripped)
    whole = scorer.tokenizer.encode(stripped + choice)
    n = len(whole) - len(context_ids)
    if n < 1:
        raise EvaluationError(f"choice {choice!r} adds no tokens to its context")
    if n >= scorer.context_length:
        raise EvaluationError(f"choice {choice[:40]!r} is longer than the model's context")
    ids = whole[-scorer.context_length:]
    logprobs = scorer.token_logprobs(ids)
    return float(logprobs[-n:].sum()), n


@dataclass(frozen=True)
class ChoiceResult:
    accuracy: float
    accuracy_norm: float  # by log-likelihood per byte of the choice
    records: int


def choice_accuracy(scorer: Scorer, records: Sequence[ChoiceRecord]) -> ChoiceResult:
    hits = hits_norm = 0
    for record in records:
        sums = [choice_logprob(scorer, record.context, c)[0] for c in record.choices]
        per_byte = [s / len(c.encode("utf-8")) for s, c in zip(sums, record.choices)]
        hits += int(np.argmax(sums)) == record.label
        hits_norm += int(np.argmax(per_byte)) == record.label
    return ChoiceResult(hits / len(records), hits_norm / len(records), len(records))
