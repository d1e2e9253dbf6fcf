"""An LLM package on one backend: its greedy tokens after a prompt, its logits along
the reference's tokens, its decode speed; and how they compare with onnxruntime CPU's.

Two checks:
- logits: the prompt's prefill, then one decode step per reference token through the
  backend's own KV cache (teacher forcing, so every backend sees the same tokens); they
  must agree within a tolerance set by the backend's arithmetic, relative to the
  largest reference logit;
- greedy tokens, generated freely: the same tokens, unless they part where the
  reference's two best logits lie within twice that tolerance (a near tie, where
  rounding may pick either; the logits check still covers every step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from e2edge.selftest.backends import Placement

PROMPT = "The quick brown fox jumps over the lazy dog."
GREEDY_TOKENS = 16  # compared with the reference
TIMED_TOKENS = 64  # decoded for the speed figure
# max |logit - reference| / max |reference logit|, by the arithmetic the backend runs in.
# int8-activations: a package whose MatMulNBits quantise their inputs to int8 (accuracy
# level 4) run by a backend that does not: one int8 step is 1/127 of a token's range.
LOGIT_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 2e-2, "int8-activations": 5e-2}


@dataclass
class LLMRun:
    prompt_ids: list[int]
    tokens: list[int]  # GREEDY_TOKENS greedy tokens after the prompt, freely generated
    # (prompt + GREEDY_TOKENS - 1, vocab) float32: row i predicts the token after
    # position i of the prompt followed by the reference's tokens
    logits: np.ndarray
    providers: list[str]
    numbers: dict[str, Any] = field(default_factory=dict)  # timings


def run(placement: Placement, reference: LLMRun | None = None) -> LLMRun:
    """The package on `placement`; its logits follow `reference`'s tokens (its own
    when this is the reference)."""
    from runtime.llm.engine import LLMEngine

    engine = LLMEngine.load(placement.path, backend=placement.backend,
                            providers=placement.providers or None)
    ids = engine.encode(PROMPT)
    tokens, _ = _greedy(engine, ids, GREEDY_TOKENS)
    forced = reference.tokens if reference is not None else tokens
    started = time.perf_counter()
    logits = _forced_logits(engine, ids, forced)
    forced_s = time.perf_counter() - started
    timed = min(TIMED_TOKENS, engine.context_length - len(ids))
    _, stats = _greedy(engine, ids, timed)
    numbers = {
        "prompt_tokens": len(ids),
        "forced_steps_ms": round(forced_s * 1e3, 2),
        "decode_tokens": timed,
        "decode_tokens_per_s": round(stats.decode_tokens_per_s, 1),
    }
    return LLMRun(ids, tokens, logits, list(engine.providers), numbers)


def _forced_logits(engine, ids: list[int], tokens: list[int]) -> np.ndarray:
    """The prefill of `ids`, then a decode step for each of tokens[:-1]: every row's
    logits, (len(ids) + len(tokens) - 1, vocab)."""
    cache = engine.empty_cache(capacity=len(ids) + len(tokens))
    logits, cache = engine.forward(np.asarray([ids], dtype=np.int64), 0, cache)
    rows = [np.asarray(logits[0], np.float32)]
    for i, token in enumerate(tokens[:-1]):
        step, cache = engine.forward(np.asarray([[token]], dtype=np.int64), len(ids) + i, cache)
        rows.append(np.asarray(step[0], np.float32))
    return np.concatenate(rows)


def _greedy(engine, ids: list[int], count: int):
    """`count` greedy tokens (EOS ignored, so always `count`) and the generation's stats."""
    from runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=count, temperature=0.0, ignore_eos=True)
    tokens: list[int] = []
    stats = None
    for event in engine.generate(ids, params):
        tokens.extend(event.token_ids)
        stats = event.stats or stats
    return tokens, stats


def reference(path, cpu_run: LLMRun) -> LLMRun:
    """The onnxruntime CPU row is the reference."""
    return cpu_run


def arithmetic(backend_arithmetic: str, manifest: dict[str, Any], run: LLMRun) -> str:
    """The tolerance key for this package on a backend that runs in `backend_arithmetic`."""
    quantization = manifest.get("quantization") or {}
    if backend_arithmetic != "fp32" and quantization.get("accuracy_level") == 4:
        return "int8-activations"
    return backend_arithmetic


def compare(reference: LLMRun, run: LLMRun, arithmetic: str) -> tuple[dict[str, Any], list[str]]:
    """(numbers, what disagrees): the logits within tolerance, the greedy tokens equal
    up to a near tie."""
    scale = max(float(np.abs(reference.logits).max()), 1.0)
    tolerance = LOGIT_TOLERANCE[arithmetic] * scale
    if run.logits.shape != reference.logits.shape or run.prompt_ids != reference.prompt_ids:
        return {}, [f"{len(run.prompt_ids)} prompt tokens and logits of shape "
                    f"{run.logits.shape}; the reference: {len(reference.prompt_ids)} and "
                    f"{reference.logits.shape} (another tokenizer?)"]
    diff = float(np.abs(run.logits - reference.logits).max())
    numbers: dict[str, Any] = {
        "max_abs_logit_diff": diff,
        "logit_tolerance": tolerance,
        "arithmetic": arithmetic,
        "greedy_tokens": len(reference.tokens),
        "greedy_tokens_match": run.tokens == reference.tokens,
    }
    problems = []
    if not diff <= tolerance:  # NaN fails too
        problems.append(f"max |logit diff| {diff:.3g} exceeds {tolerance:.3g} ({arithmetic})")
    parted = next((i for i, (a, b) in enumerate(zip(run.tokens, reference.tokens)) if a != b),
                  None)
    if parted is not None:
        best = np.sort(reference.logits[len(reference.prompt_ids) - 1 + parted])[-2:]
        gap = float(best[1] - best[0])
        if gap <= 2 * tolerance:
            numbers["near_tie_at"] = parted
        else:
            problems.append(f"greedy tokens part at token {parted}: {run.tokens[parted]} where "
                            f"the reference has {reference.tokens[parted]}, whose logit leads "
                            f"by {gap:.3g}")
    return numbers, problems
