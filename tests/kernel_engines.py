"""One package loaded twice, on an e2edge CPU kernel and on onnxruntime's own, for the
kernel tests (tests/runtime/kernels): the logits of a prompt and greedy tokens of both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPT = "To be, or not to be, that is the question"
KEPT = {"int4": "onnxruntime MatMulNBits", "fp32": "onnxruntime MatMul"}


def engines_on_and_off(package: Path, weights: str):
    """(the engine on the `weights` kernel, the engine with it off), each checked to say so."""
    from runtime.llm.engine import LLMEngine

    setting = f"{weights}_kernel"
    kernel = LLMEngine.load(package, threads=2, **{setting: "auto"})
    plain = LLMEngine.load(package, threads=2, **{setting: "off"})
    assert getattr(kernel, f"{weights}_matmuls").startswith(f"e2edge {weights} kernel on ")
    assert f"{weights} matmuls: e2edge {weights} kernel" in kernel.execution
    assert getattr(plain, f"{weights}_matmuls").startswith(f"{KEPT[weights]} (turned off")
    return kernel, plain


def prompt_logits(*engines) -> list[np.ndarray]:
    """Each engine's logits over PROMPT in one forward pass."""
    ids = np.asarray([engines[0].encode(PROMPT)])
    return [engine.forward(ids, 0, engine.empty_cache())[0] for engine in engines]


def greedy_tokens(*engines, count: int = 24) -> list[list[int]]:
    """Each engine's `count` greedy tokens after "To be"."""
    from runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=count, ignore_eos=True)
    return [[t for e in engine.generate("To be", params) for t in e.token_ids]
            for engine in engines]
