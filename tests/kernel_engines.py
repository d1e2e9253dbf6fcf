"""What the kernel tests (tests/runtime/kernels) share: an onnxruntime CPU session with
e2edge's ops registered, a closeness check, and one package loaded twice, on an e2edge
CPU kernel and on onnxruntime's own, with the logits of a prompt and greedy tokens."""

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


def cpu_session(model, threads: int = 2, library=None):
    """An onnxruntime CPU session over `model`, e2edge's ops registered when `library`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(str(library.path))
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def assert_close(actual, expected, rtol: float) -> None:
    """|actual - expected| <= rtol x the largest |expected|, everywhere."""
    scale = float(np.abs(expected).max())
    assert np.abs(actual - expected).max() <= rtol * scale, (
        np.abs(actual - expected).max(), scale)
