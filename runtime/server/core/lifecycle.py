"""Changing the served models while the daemon runs: SIGHUP reloads, repository load/unload.

    lifecycle = ModelLifecycle(config, registry, health, auth, loaded)
    report = await lifecycle.reload(load_config(path))   # SIGHUP in `e2edge serve`
    await lifecycle.load(model_config)                    # KServe RepositoryModelLoad
    await lifecycle.unload("demo")                        # KServe RepositoryModelUnload

What a reload does, model by model (by name, against the running registry):
- added: its entry appears as LOADING at once (health NOT_SERVING, requests get
  UNAVAILABLE "still loading"), then turns READY or FAILED.
- removed: it leaves the registry at once (new requests get NOT_FOUND); requests
  already running or queued on it finish on its workers, then they are shut down.
- changed (its config entry differs, or its package's manifest changed on disk): the
  replacement loads beside the old one, which keeps serving; when it is READY the
  name points at it (new requests go there) and the old one drains as if removed.
  A replacement that fails to load is dropped and the old one goes on serving.
- rescheduled (only its `share` or `priority` changed): the box's scheduler takes the
  new values at once (scheduler.py); the model is not reloaded, its streams go on.
- unchanged: untouched; its streams never notice.
Requests hold their model entry for their whole life, so a swap never moves or
cuts a running stream. Changes run one at a time (a lock), after the initial load.

Settings bound to the listening socket or the process (listen, tls,
max_message_bytes, power, metrics) need a restart: a reload that changes them says
so and keeps the old ones. Logging and auth tokens are applied. An invalid config
file changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from runtime.config import DaemonConfig, ModelConfig
from runtime.errors import E2edgeError, ModelNotFound
from runtime.server.core.health import DaemonHealth
from runtime.server.core.registry import ModelEntry, ModelRegistry, ModelState
from runtime.server.guard.request_log import configure_logging
from runtime.server.guard.security import TokenAuth, load_tokens

log = logging.getLogger("e2edge.server")

RESTART_ONLY = ("listen", "tls", "max_message_bytes", "power", "metrics")
DRAIN_POLL_S = 0.05


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)  # new share or priority, in place
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why (old one kept if any)
    restart_needed: list[str] = field(default_factory=list)  # settings left as they were
    error: str = ""  # the config itself was refused: nothing changed

    def summary(self) -> str:
        if self.error:
            return f"reload refused, nothing changed: {self.error}"
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("added", self.added), ("removed", self.removed), ("replaced", self.replaced),
            ("rescheduled", self.rescheduled), ("unchanged", self.unchanged)) if names]
        parts += [f"failed {name}: {why}" for name, why in self.failed.items()]
        if self.restart_needed:
            parts.append(f"needs a restart to change: {', '.join(self.restart_needed)}")
        return "reload done; " + "; ".join(parts or ["no models"])


def package_fingerprint(config: ModelConfig) -> str:
    """The sha256 of the package's manifest.json: it lists every file's checksum, so it
    changes whenever the package is rebuilt in place. "" when it cannot be read."""
    try:
        return hashlib.sha256((config.path / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return ""


class ModelLifecycle:
    """Owns the daemon's current config: every change of models goes through here."""

    def __init__(self, config: DaemonConfig, registry: ModelRegistry, health: DaemonHealth,
                 auth: TokenAuth, loaded: Callable[[], Awaitable[None]]):
        self.config = config  # as last applied (restart-only settings as the daemon began)
        self.registry = registry
        self.health = health
        self.auth = auth
        self._loaded = loaded  # waits until the daemon's first load is over
        self._lock = asyncio.Lock()
        self._fingerprints = {e.name: package_fingerprint(e.config) for e in self.registry}
        self._retiring: set[asyncio.Task] = set()

    # ---- one model -----------------------------------------------------------------
    async def load(self, config: ModelConfig) -> ModelEntry:
        """Load (or replace) one model; see the module docstring. Returns the entry that
        serves the name afterwards (FAILED when there was nothing to keep)."""
        async with self._lock:
            return await self._load(config)

    async def unload(self, name: str) -> None:
        """Take a model out of service; its running requests finish first."""
        async with self._lock:
            await self._unload(name)

    async def _load(self, config: ModelConfig) -> ModelEntry:
        await self._loaded()
        loader = ModelRegistry([config], loader=self.registry._loader,
                               scheduler=self.registry.scheduler,
                               models_on_box=len(set(self.registry.entries) | {config.name}))
        fresh = loader.entries[config.name]
        old = self.registry.entries.get(config.name)
        if old is None:
            self.registry.entries[config.name] = fresh  # LOADING shows in ListModels
            await self.health.model_changed(fresh)
        await loader.load_all(_ignore)
        if old is not None:
            if fresh.state is not ModelState.READY and old.state is ModelState.READY:
                log.error("model %s: its replacement failed to load (%s); the old one "
                          "keeps serving", config.name, fresh.error)
                fresh.close(wait=False)
                return fresh
            self.registry.entries[config.name] = fresh
            self._retire(old)
        self._fingerprints[config.name] = package_fingerprint(config)
        await self.health.model_changed(fresh)
        await self._update_overall_health()
        return fresh

    async def _unload(self, name: str) -> None:
        await self._loaded()
        entry = self.registry.entries.pop(name, None)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        self._fingerprints.pop(name, None)
        await self.health.model_removed(name)
        await self._update_overall_health()
        self._retire(entry)

    def _retire(self, entry: ModelEntry) -> None:
        task = asyncio.get_running_loop().create_task(_drain_and_close(entry))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def wait_retired(self) -> None:
        """Until every replaced or removed model has drained and closed (tests, shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def _update_overall_health(self) -> None:
        await self.health.set_overall(any(e.state is ModelState.READY for e in self.registry))

    # ---- a whole config ------------------------------------------------------------
    async def reload(self, config: DaemonConfig) -> ReloadReport:
        async with self._lock:
            report = ReloadReport()
            old = self.config
            report.restart_needed = [key for key in RESTART_ONLY
                                     if getattr(old, key) != getattr(config, key)]
            try:
                tokens = None if config.auth is None else load_tokens(config.auth)
            except E2edgeError as e:
                report.error = str(e)
                return report
            self.auth.set_tokens(tokens)
            if config.logging != old.logging:
                configure_logging(config.logging)
            wanted = {m.name: m for m in config.models}
            for name in [n for n in self.registry.entries if n not in wanted]:
                await self._unload(name)
                report.removed.append(name)
            for name, model in wanted.items():
                entry = self.registry.entries.get(name)
                if entry is None:
                    fresh = await self._load(model)
                    report.added.append(name)
                elif entry.config != model and self._only_scheduling_changed(entry, model):
                    entry.config = model
                    self.registry.schedule(entry)
                    report.rescheduled.append(name)
                    continue
                elif (entry.config != model
                      or self._fingerprints.get(name) != package_fingerprint(model)
                      or entry.state is ModelState.FAILED):
                    fresh = await self._load(model)
                    if self.registry.entries[name] is fresh:
                        report.replaced.append(name)
                else:
                    report.unchanged.append(name)
                    continue
                if fresh.state is not ModelState.READY:
                    old_kept = self.registry.entries[name] is not fresh
                    report.failed[name] = fresh.error + (
                        " (the previous version keeps serving)" if old_kept else "")
            kept = {key: getattr(old, key) for key in RESTART_ONLY}
            self.config = replace(config, **kept)
            return report

    def _only_scheduling_changed(self, entry: ModelEntry, config: ModelConfig) -> bool:
        """The new config differs from the entry's in share or priority alone, and the
        model serves its unchanged package: the scheduler can take it without a reload."""
        return (entry.state is ModelState.READY
                and self._fingerprints.get(entry.name) == package_fingerprint(config)
                and replace(entry.config, share=config.share, priority=config.priority) == config)


async def _ignore(entry: ModelEntry) -> None:
    """load_all's per-model callback; the lifecycle reports health itself."""


async def _drain_and_close(entry: ModelEntry) -> None:
    """Wait for the entry's running and queued requests, then stop its workers."""
    waited = 0.0
    while entry.busy():
        await asyncio.sleep(DRAIN_POLL_S)
        waited += DRAIN_POLL_S
    log.info("model %s (%s) retired after draining %.2fs", entry.name, entry.config.path,
             waited)
    entry.close(wait=False)  # idle now: its threads exit
    entry.model = None  # the sessions go with the last reference
