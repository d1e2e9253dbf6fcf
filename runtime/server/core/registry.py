"""The daemon's models: loaded from the config, each with its state, slots and workers.

Each configured model is LOADING until its package is verified and its engine is up,
then READY, or FAILED with the reason. A model that fails to load does not stop the
daemon: its health service reports NOT_SERVING, requests for it get UNAVAILABLE with
the reason, and the other models are served as usual.

Generation runs on each model's own worker threads (as many as it has slots), so a
busy model never takes threads from another and the event loop only moves messages.
Those threads take turns on the box's cores (and GPU) through one scheduler that the
registry owns (scheduler.py): each model gets its gate when it loads, with its share,
priority and the slots it holds while it runs.
What the services may ask of a loaded model is written down in served_model.py.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import cast

from runtime.backends.selection import BackendChoice, BackendHost, choose_backend
from runtime.config import ModelConfig
from runtime.errors import E2edgeError, InvalidRequest, ModelNotFound, PackageError
from runtime.package import load_package
from runtime.server.core import request_cpu
from runtime.server.core.admission import Admission
from runtime.server.core.fair_queue import Schedule
from runtime.server.core.scheduler import Scheduler, placement
from runtime.server.core.served_model import ImageClassifier, ServedModel, TextGenerator
from runtime.server.guard.errors import ModelUnavailable

log = logging.getLogger("e2edge.server")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


DEFAULT_MAX_SEQUENCE_LENGTH = 2048


@functools.cache
def _host() -> BackendHost:
    """What this box offers the backends, probed once per process (at the first load)."""
    return BackendHost.probe()


def _load_llm(config: ModelConfig, choice: BackendChoice) -> TextGenerator:
    """The package's engine; with a shared KV buffer and several slots, batched streams."""
    from runtime.llm.continuous_batching import ContinuousBatcher
    from runtime.llm.engine import LLMEngine

    engine = LLMEngine.load(
        config.path,
        backend=choice.name,
        threads=config.threads,
        providers=list(choice.providers) or None,
        spin=config.spin is not False,
    )
    engine.backend_reason = choice.reason
    if not engine.shared_cache or config.max_concurrent == 1:
        return engine
    length = config.max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH
    return ContinuousBatcher(engine, slots=config.max_concurrent, capacity=length)


def _load_vision(config: ModelConfig, choice: BackendChoice) -> ImageClassifier:
    from runtime.server.core.vision_model import load_vision

    return load_vision(config, choice)


# kind (from the package manifest) -> how to build its model on the chosen backend.
LOADERS: dict[str, Callable[[ModelConfig, BackendChoice], ServedModel]] = {
    "llm": _load_llm, "vision": _load_vision}


def load_model(config: ModelConfig) -> ServedModel:
    """Build the served model for a configured one; raises PackageError & co. on failure."""
    package = load_package(config.path, verify=False)  # the full check runs in the loader
    kind = package.kind
    loader = LOADERS.get(kind)
    if loader is None:
        raise PackageError(
            f"{config.path}: kind {kind!r} cannot be served by this daemon yet "
            f"(it serves: {', '.join(sorted(LOADERS))})"
        )
    choice = choose_backend(config, package, _host())
    log.info("model %s: %s (%s)", config.name, choice.name, choice.reason)
    return loader(config, choice)


@dataclass
class ModelEntry:
    config: ModelConfig
    admission: Admission
    state: ModelState = ModelState.LOADING
    error: str = ""
    model: ServedModel | None = None  # once READY
    executor: ThreadPoolExecutor | None = None  # the model's workers once READY
    load_s: float = 0.0
    manifest: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def text_generator(self, why: str = "", field: str = "model") -> TextGenerator:
        """The model as an LLM; InvalidRequest on `field` (saying `why`) when it is not one."""
        if self.model is None or self.model.kind != "llm":
            raise InvalidRequest(field, why or f"{self.name!r} is not an LLM")
        return cast(TextGenerator, self.model)

    def image_classifier(self, why: str = "", field: str = "model") -> ImageClassifier:
        """The model as a vision model; InvalidRequest on `field` when it is not one."""
        if self.model is None or self.model.kind != "vision":
            raise InvalidRequest(field, why or f"{self.name!r} is not a vision model")
        return cast(ImageClassifier, self.model)

    def queue_counts(self) -> tuple[int, int]:
        """(running, waiting) requests: an LLM's wait for a slot, a vision model's for a batch."""
        if self.model is not None and self.model.kind == "vision":
            batcher = cast(ImageClassifier, self.model).batcher
            return (batcher.active, batcher.queued) if batcher is not None else (0, 0)
        return self.admission.active, self.admission.queued

    def busy(self) -> bool:
        """Requests still running or waiting on this model."""
        return any(self.queue_counts())

    def close(self, wait: bool = True) -> None:
        """Stop the model's threads, then its workers (nothing may run on them any more)."""
        if self.model is not None:
            self.model.close()  # first: a vision model's batch workers hold threads
        if self.executor is not None:
            self.executor.shutdown(wait=wait)


def with_spin_decided(config: ModelConfig, models_on_box: int) -> ModelConfig:
    """`spin: auto` made true or false: threads busy-wait between ops only when the model
    has the daemon to itself. The entry keeps the config as written (reload compares it)."""
    if config.spin is not None:
        return config
    return replace(config, spin=models_on_box <= 1)


class ModelRegistry:
    def __init__(
        self,
        models: Sequence[ModelConfig],
        loader: Callable[[ModelConfig], ServedModel] = load_model,
        scheduler: Scheduler | None = None,
        models_on_box: int | None = None,
    ):
        """`models_on_box`: how many models the daemon serves with these (default: these),
        which decides `spin: auto` as each loads (runtime/backends/cpu_threads.py)."""
        self._loader = loader
        self.scheduler = scheduler or Scheduler.for_host()  # one per box: share it
        self.entries: dict[str, ModelEntry] = {m.name: self._entry(m) for m in models}
        self.models_on_box = models_on_box or len(self.entries)

    def _entry(self, config: ModelConfig) -> ModelEntry:
        gate = self.scheduler.gate(config.name)  # a request that leaves its queue is shed
        return ModelEntry(config, Admission(config.name, config.max_concurrent,
                                            config.max_queue, on_shed=gate.shed))

    def schedule(self, entry: ModelEntry) -> None:
        """Give the scheduler the entry's share, priority and slots (at load and reload)."""
        if entry.model is None:
            raise RuntimeError(f"model {entry.name!r} is not loaded")
        resource, slots = placement(entry.model.backend_name, entry.model.providers,
                                    entry.config.threads)
        self.scheduler.set(entry.name, Schedule(entry.config.share, entry.config.priority,
                                                resource, slots))

    def __iter__(self):
        return iter(self.entries.values())

    def get(self, name: str) -> ModelEntry:
        """The entry in any state; ModelNotFound when the config has no such model."""
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(self.entries) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (models: {known})")
        return entry

    def ready(self, name: str) -> ModelEntry:
        """The entry of a READY model; ModelUnavailable while loading or after a failure."""
        entry = self.get(name)
        if entry.state is ModelState.LOADING:
            raise ModelUnavailable(f"model {name!r} is still loading; retry shortly")
        if entry.state is ModelState.FAILED:
            raise ModelUnavailable(f"model {name!r} failed to load: {entry.error}")
        self.bill(entry.name)  # the call asks for this model: its handling is the model's
        return entry

    def bill(self, name: str) -> None:
        """Charge the running call's CPU time on the event loop to model `name`'s share
        (core/request_cpu.py); a name the scheduler does not know is charged nothing."""
        request_cpu.bill(self.scheduler.charge, name)

    async def load_all(self, on_change: Callable[[ModelEntry], Awaitable[None]]) -> None:
        """Load every model in config order, off the event loop; report each result."""
        loop = asyncio.get_running_loop()
        for entry in self.entries.values():
            started = time.monotonic()
            try:
                model = await loop.run_in_executor(
                    None, self._loader, with_spin_decided(entry.config, self.models_on_box))
            except Exception as e:  # any failure marks this model FAILED; the daemon goes on
                entry.state = ModelState.FAILED
                entry.error = " ".join(str(e).split()) or type(e).__name__
                if not isinstance(e, E2edgeError):
                    entry.error = f"{type(e).__name__}: {entry.error}"
                    log.error("model %s failed to load", entry.name, exc_info=e)
                else:
                    log.error("model %s failed to load: %s", entry.name, entry.error)
            else:
                entry.model = model
                entry.manifest = model.package.manifest
                self.schedule(entry)
                model.gate = self.scheduler.gate(entry.name)
                entry.executor = ThreadPoolExecutor(
                    max_workers=entry.config.max_concurrent,
                    thread_name_prefix=f"e2edge-{entry.name}",
                )
                entry.state = ModelState.READY
                log.info("model %s ready (%s, %s; %s) in %.2fs", entry.name, model.backend_name,
                         ",".join(model.providers), model.execution, time.monotonic() - started)
            entry.load_s = time.monotonic() - started
            await on_change(entry)

    def close(self) -> None:
        """Stop the worker threads (after the server has stopped: nothing runs on them)."""
        for entry in self.entries.values():
            entry.close()
