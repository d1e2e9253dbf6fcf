"""Type-checked by mypy (test_served_model.py, `make lint`), never run: each class the
registry serves must implement its Protocol from runtime/server/core/served_model.py."""

from runtime.llm.continuous_batching import ContinuousBatcher
from runtime.llm.engine import LLMEngine
from runtime.server.core.served_model import ImageClassifier, ServedModel, TextGenerator
from runtime.server.core.vision_model import VisionModel


def served(engine: LLMEngine, batcher: ContinuousBatcher, vision: VisionModel) -> None:
    generators: list[TextGenerator] = [engine, batcher]
    classifiers: list[ImageClassifier] = [vision]
    models: list[ServedModel] = [*generators, *classifiers]
    assert models
