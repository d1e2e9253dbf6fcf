"""What the daemon needs of a model it serves, written down once.

The registry holds one `ServedModel` per configured model, whatever runs it: an
`LLMEngine` (one stream at a time per worker), a `ContinuousBatcher` (many streams
sharing one KV buffer) or a `VisionModel` (images batched by its Batcher). The
services ask a model only through these Protocols, never which class it is; `kind`
(the package's) tells which of the two sub-protocols it implements.
`tests/runtime/server/core/test_served_model.py` has mypy check that the three
classes implement them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from runtime.llm.chat_template import ChatTemplate
    from runtime.llm.engine import GenerationEvent, Prompt
    from runtime.llm.sampling import SamplingParams
    from runtime.package import ModelPackage
    from runtime.server.core.batcher import Batcher, RunWindow
    from runtime.server.core.scheduler import StepGate
    from runtime.vision.serving_config import ImageLimits


class ServedModel(Protocol):
    """Every served model: what it is, what runs it, and how it stops."""

    kind: str  # the package's kind: "llm" (a TextGenerator) or "vision" (an ImageClassifier)
    package: ModelPackage
    backend_name: str  # "onnxruntime" | "tensorrt": what really runs it
    providers: list[str]  # what executes inside the backend, e.g. ["CPUExecutionProvider"]
    backend_reason: str  # why that backend: the config, or what `auto` found
    execution: str  # how the weights run, e.g. "ternary unpacked to fp16"
    # Where each unit of work (a prefill, a decode step, a batch) waits its turn on the
    # box: UNGATED until the registry hands it the scheduler's gate (scheduler.py).
    gate: StepGate

    def close(self) -> None:
        """Stop the model's own threads, if any (the registry calls it when the model goes)."""
        ...


class TextGenerator(ServedModel, Protocol):
    """An LLM: token streams, at most `context_length` tokens per sequence."""

    context_length: int
    chat_template: ChatTemplate | None  # None: the package takes no chat messages

    def generate(self, prompt: Prompt, params: SamplingParams,
                 cancelled: Callable[[], bool] | None = None) -> Iterator[GenerationEvent]:
        """Validate now (raising InvalidRequest), then return the event stream."""
        ...


class ImageClassifier(ServedModel, Protocol):
    """A vision model: preprocessed pixels in, class probabilities out, through its batcher."""

    labels: list[str]
    limits: ImageLimits
    batcher: Batcher | None  # None until the first request

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One decoded image -> (1, C, S, S) float32, per the package manifest."""
        ...

    def check_top_k(self, top_k: int) -> int:
        ...

    def top(self, probabilities: np.ndarray, top_k: int) -> list[list[tuple[str, int, float]]]:
        ...

    def batcher_on(self, executor: Executor, run_window: RunWindow | None = None) -> Batcher:
        ...
