"""A vision package as the daemon serves it: VisionEngine plus batching and limits.

The registry loads it (`load_vision`, its loader for kind "vision"); the Classify
service decodes and preprocesses each image on its own (sizes differ), then hands
the (n, C, S, S) pixels of a request to the model's Batcher, which runs
`probabilities` on whole batches on the model's worker threads.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from runtime.backends.selection import BackendChoice
from runtime.config import ModelConfig
from runtime.errors import InvalidRequest
from runtime.numerics import softmax
from runtime.server.core.batcher import Batcher, RunWindow
from runtime.server.core.scheduler import UNGATED, StepGate
from runtime.vision.engine import VisionEngine

EXECUTION_TEXT = {  # VisionEngine's execution modes for a ternary package, in words
    "packed": "ternary, 2-bit MatMulNBits as stored",
    "int8": "ternary as int8 codes, integer GEMM on int8 activations",
    "fp16": "ternary unpacked to fp16",
    "fp32": "ternary unpacked to fp32",
}


class VisionModel:
    """An ImageClassifier (served_model.py) over a VisionEngine."""

    kind = "vision"

    def __init__(self, engine: VisionEngine, config: ModelConfig):
        self.engine = engine
        self.package = engine.package
        self.backend_name = engine.backend_name
        self.providers: list[str] = list(engine.providers)
        self.backend_reason = "as configured"  # the registry's loader says why
        self.execution = EXECUTION_TEXT[engine.execution] if engine.ternary else "fp32"
        if engine.tensorrt is not None:
            self.execution = "TensorRT engine" + (
                ", ternary through the packed-ternary plugin" if engine.ternary else "")
        self.config = config
        self.limits = config.image_limits
        self.labels = engine.labels
        self.batcher: Batcher | None = None  # made by `batcher_on` at the first request
        self.gate: StepGate = UNGATED  # the daemon's scheduler: each batch waits its turn

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One decoded image -> (1, C, S, S) float32, per the package manifest."""
        return self.engine.preprocess(image)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(B, C, S, S) preprocessed -> (B, n_classes); runs on a worker thread."""
        return softmax(self.engine.logits(pixels))

    def check_top_k(self, top_k: int) -> int:
        """0 (unset) -> 1; otherwise 1..n_classes."""
        top_k = top_k or 1
        if not 1 <= top_k <= len(self.labels):
            raise InvalidRequest("top_k", f"must be between 1 and {len(self.labels)} (the "
                                          f"model's classes), got {top_k}")
        return top_k

    def top(self, probabilities: np.ndarray, top_k: int) -> list[list[tuple[str, int, float]]]:
        """(n, K) -> per image the top_k (label, index, probability), most likely first.

        The stable sort breaks ties by class index, as VisionEngine.classify does.
        """
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [[(self.labels[i], int(i), float(row[i])) for i in best]
                for row, best in zip(probabilities, order)]

    def batcher_on(self, executor: Executor, run_window: RunWindow | None = None) -> Batcher:
        """The model's batcher, made on first use with the registry's worker threads.

        Every service that classifies (Classify, KServe) shares it, so their requests
        batch together; the first caller that brings a `run_window` (Classify's energy
        windows) installs it, whichever service made the batcher.
        """
        if self.batcher is None:
            self.batcher = Batcher(
                self.config.name, self.probabilities, executor, self.config.batching,
                max_concurrent=self.config.max_concurrent, max_queue=self.config.max_queue,
                gate=self.gate,
            )
        if run_window is not None and self.batcher.run_window is None:
            self.batcher.run_window = run_window
        return self.batcher

    def close(self) -> None:
        """Stop the batcher's workers (the registry calls this when the model goes)."""
        if self.batcher is not None:
            self.batcher.close()


def load_vision(config: ModelConfig, choice: BackendChoice) -> VisionModel:
    """The registry's loader for kind "vision" packages, on the backend chosen for it.

    A TensorRT engine takes at most its optimisation profile's batch: dynamic batching
    is capped there."""
    engine = VisionEngine(config.path, threads=config.threads,
                          providers=list(choice.providers) or None, backend=choice.name,
                          spin=config.spin is not False)
    if engine.max_batch is not None and config.batching.max_batch > engine.max_batch:
        config = replace(config, batching=replace(config.batching, max_batch=engine.max_batch))
    model = VisionModel(engine, config)
    model.backend_reason = choice.reason
    return model
