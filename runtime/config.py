"""The daemon's configuration: a YAML file read into frozen dataclasses, once, at start.

    listen: 127.0.0.1:50051        # host:port (port 0 = any free port) or unix:/path
    grace_period_s: 10             # SIGTERM: in-flight streams get this long to finish
    max_message_bytes: 16777216    # gRPC send and receive limit
    decode_threads: 0              # image decoding threads; 0 = half the cores, at least 1
    decode_inline_max_pixels: 16384  # requests this small decode on the event loop; 0 = never
    models:                        # at least one; everything but name and path defaults
      - name: demo
        path: ../artifacts/demo-llm    # relative paths start at this file's folder
        backend: onnxruntime           # onnxruntime | tensorrt | auto (see e2edge doctor)
        threads: 0                     # intra-op threads; 0 = the backend's choice
        spin: auto                     # threads busy-wait between ops: true | false | auto
        providers: []                  # e.g. [CUDAExecutionProvider]; [] = the default
        max_concurrent: 1              # generations running at once
        max_queue: 16                  # requests waiting for a slot; more -> RESOURCE_EXHAUSTED
        max_sequence_length: 0         # LLMs: tokens per stream; 0 = min(context, 2048)
        share: 1                       # weight of the box's execution time (equal by default)
        priority: 0                    # higher is served first, within a bound (fair_queue.py)
        batching: {max_batch: 16, max_delay_ms: 5}   # vision; see runtime/vision/serving_config.py
        image_limits: {max_bytes: 16777216, max_pixels: 25000000, max_images: 64}   # vision
    logging:
      level: INFO                  # DEBUG | INFO | WARNING | ERROR
      format: text                 # text | json (one JSON object per line)
    power:                         # optional; see runtime/power/config.py for its keys
      source: auto
    tls: {cert: server.crt, key: server.key}  # optional; see runtime/security_config.py
    auth: {tokens_file: tokens}               # optional bearer tokens; same file
    repository: {directories: [models]}       # optional; see runtime/repository.py
    metrics:                       # optional: Prometheus metrics at http://LISTEN/metrics
      listen: 127.0.0.1:9400       # host:port (port 0 = any free port); no section = no endpoint

Every key, its default and what it does: docs/reference/config.md, generated from the
fields' documentation below (runtime/config_field.py). The file is composed (not just
loaded) so every node keeps its line: any error names
the file, the line and the key, e.g. `daemon.yaml:7: models[0].threads: expected an
integer >= 0, got 'four'`. Unknown keys are errors too: a typo must not silently fall
back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from runtime.config_field import section, setting
from runtime.errors import ConfigError
from runtime.power.config import PowerConfig
from runtime.repository import RepositoryConfig
from runtime.security_config import AuthConfig, TLSConfig
from runtime.vision.serving_config import (
    MAX_BATCH_LIMIT,
    MAX_DELAY_MS_LIMIT,
    MAX_IMAGES_LIMIT,
    BatchingConfig,
    ImageLimits,
)

DEFAULT_LISTEN = "127.0.0.1:50051"
# Where the systemd service listens (systemd/e2edge.yaml): under /run/e2edge, the one
# folder the hardened unit may write (RuntimeDirectory=e2edge).
SYSTEMD_SOCKET = "/run/e2edge/e2edge.sock"
DEFAULT_GRACE_PERIOD_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_METRICS_LISTEN = "127.0.0.1:9400"
MAX_MESSAGE_BYTES_LIMIT = 2**31 - 1  # gRPC keeps message sizes in an int32
DEFAULT_INLINE_MAX_PIXELS = 128 * 128  # per request: a 128 px image, or 20 of 28 px
MAX_SHARE = 1e6  # shares are relative: past this ratio a model may as well have it all
MAX_PRIORITY = 100
BACKENDS = ("onnxruntime", "tensorrt", "auto")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Model names are gRPC health service names and CLI arguments: keep them plain.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelConfig:
    """One served model: its package, its backend, and how its requests are admitted."""

    name: str = setting(example="demo", doc="""
        The model's name in requests (`GenerateRequest.model`, `e2edge generate --model`)
        and its gRPC health service name: letters, digits, `.`, `_`, `-`, starting with a
        letter or digit, at most 64 characters; unique in the file. Required.""")
    path: Path = setting(example="/var/lib/e2edge/models/demo-llm", doc="""
        The model package's folder (manifest.json, model.onnx, ...); a relative path
        starts at the config file's folder, `~` is expanded. Required. The package is
        checked when the model loads: a package that is missing or does not match its
        manifest fails that model alone (NOT_SERVING), the others are served.""")
    backend: str = setting("onnxruntime", doc=f"""
        One of {", ".join(BACKENDS)}. `onnxruntime`: onnxruntime with `providers`.
        `tensorrt`: the package's engine built for this GPU and TensorRT version (`e2edge
        build-engine`), else the model fails to load naming what is missing. `auto`: that
        engine when one fits, else onnxruntime's CUDA provider when onnxruntime-gpu sees a
        GPU, else its CPU provider. `e2edge doctor --config FILE` and `GetModel`'s
        `backend_reason` say what was chosen and why.""")
    threads: int = setting(0, doc="""
        onnxruntime intra-op threads of this model, >= 0; 0 = onnxruntime's default (every
        core). The box-wide scheduler counts a model as holding this many cores while it
        runs.""")
    spin: bool | None = setting(None, default_doc="auto", doc="""
        onnxruntime's intra-op threads between two ops: `true` busy-wait (the fastest
        decode for a model that has the cores to itself), `false` sleep, `auto` (null or
        absent): busy-wait when the daemon serves this model alone, sleep when it serves
        several, whose runs take turns on the cores with the daemon's request handling
        (runtime/backends/cpu_threads.py has the measurements). Decided as the model
        loads. A model alone that serves many clients at once may do better with
        `false`: a ViT under 64 clients on 2 cores classified 9-14 % more so.""")
    providers: tuple[str, ...] = setting((), doc="""
        onnxruntime execution providers in order of preference, e.g.
        `[CUDAExecutionProvider, CPUExecutionProvider]`; a provider this onnxruntime lacks
        fails the model's load, naming the missing one. `[]` leaves the choice to the
        daemon: an LLM gets the best providers onnxruntime has here
        (TensorRT, CUDA, CPU, those present), a vision model the CPU provider, and an LLM
        exported with `--attention gqa` the CUDA provider when onnxruntime-gpu sees a GPU
        and cuda-python is installed, else the CPU (such a package takes only the CUDA
        and CPU providers). With `backend: auto` the providers apply when no TensorRT
        engine fits; `backend: tensorrt` ignores them.""")
    max_concurrent: int = setting(1, doc="""
        Requests of this model running at once, >= 1: LLM generation slots (an LLM
        exported with `--attention gqa` decodes its streams together in one batched step),
        or a vision model's worker threads.""")
    max_queue: int = setting(16, doc="""
        Requests that may wait for a slot, >= 0; one more is refused with
        RESOURCE_EXHAUSTED ("queue full", retry later).""")
    max_sequence_length: int = setting(0, doc="""
        LLMs exported with `--attention gqa` and `max_concurrent` > 1: the tokens (prompt +
        generated) one stream may hold; the shared KV buffer is `max_concurrent` x this
        long. 0 = min(the model's context length, 2048). Other models ignore it.""")
    share: float = setting(1.0, doc=f"""
        This model's weight of the box's execution time when several models have work
        waiting, a number > 0 and <= {int(MAX_SHARE)}, relative to the other models' shares:
        with shares 3 and 1 the first gets three quarters of the busy time. A share an
        idle model does not use goes to the others.""")
    priority: int = setting(0, doc=f"""
        0 to {MAX_PRIORITY}; a model of higher priority is served first, within a bound:
        once it is ahead of its share by a fixed lead per priority level it takes turns
        with the others again (runtime/server/core/fair_queue.py).""")
    batching: BatchingConfig = setting(BatchingConfig(), doc="""
        Vision models: dynamic batching; absent = off. LLMs accept it and ignore it.""")
    image_limits: ImageLimits = setting(ImageLimits(), doc="""
        Vision models: what one Classify request may send; a request over a limit is
        INVALID_ARGUMENT naming the limit. LLMs accept it and ignore it.""")


@dataclass(frozen=True)
class LoggingConfig:
    """The daemon's log on stderr (journald under systemd)."""

    level: str = setting("INFO", doc=f"""
        {" | ".join(LOG_LEVELS)} (any case). Each request is logged at INFO.""")
    format: str = setting("text", doc="""
        `text` (one readable line per record) or `json` (one JSON object per line, for
        journald and log shippers).""")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = setting(DEFAULT_METRICS_LISTEN, doc="""
        host:port of the HTTP endpoint; metrics are at http://LISTEN/metrics (port 0 = any
        free port). A unix socket is refused: Prometheus scrapes over TCP.""")


@dataclass(frozen=True)
class DaemonConfig:
    """The whole file."""

    models: tuple[ModelConfig, ...] = setting(doc="""
        The models to serve: a non-empty list of mappings, keys below. Required.""")
    listen: str = setting(DEFAULT_LISTEN, doc=f"""
        Where the daemon serves gRPC: host:port (`[v6]:port` too; port 0 = any free port)
        or `unix:/path` for a unix socket (the systemd service uses
        `unix:{SYSTEMD_SOCKET}`). `e2edge serve --listen` overrides it.""")
    grace_period_s: float = setting(DEFAULT_GRACE_PERIOD_S, doc="""
        Seconds >= 0 that in-flight requests get to finish on SIGTERM/SIGINT before the
        daemon exits; new requests get UNAVAILABLE meanwhile.""")
    max_message_bytes: int = setting(DEFAULT_MAX_MESSAGE_BYTES, doc=f"""
        gRPC send and receive limit in bytes, 1024 to {MAX_MESSAGE_BYTES_LIMIT}; a bigger
        request gets RESOURCE_EXHAUSTED.""")
    decode_threads: int = setting(0, doc="""
        Threads that decode and preprocess images for the vision models, 0 to 256; 0 =
        half the cores, at least 1.""")
    decode_inline_max_pixels: int = setting(DEFAULT_INLINE_MAX_PIXELS, doc="""
        Requests whose images hold at most this many pixels in all are decoded on the
        event loop itself (cheaper than a hand-off for small images); 0 = every request
        on a decoding thread.""")
    logging: LoggingConfig = section(LoggingConfig, doc="The daemon's log; keys below.")
    power: PowerConfig | None = setting(None, doc="""
        Where power readings come from, for the energy in every response; keys below.
        Absent = every key's default (`source: auto`).""")
    metrics: MetricsConfig | None = setting(None, doc="""
        A Prometheus endpoint; absent = none.""")
    tls: TLSConfig | None = setting(None, doc="""
        TLS, or mutual TLS with `client_ca`; absent = plaintext (fine on loopback or a unix
        socket).""")
    auth: AuthConfig | None = setting(None, doc="""
        Bearer tokens every call must carry (`authorization: Bearer TOKEN` metadata), but
        the health checks; absent = no token asked. Use it with TLS, or on loopback / a
        unix socket only.""")
    repository: RepositoryConfig | None = setting(None, doc="""
        Folders of packages that KServe's RepositoryModelLoad / RepositoryModelUnload may
        load and unload by name; absent = repository load/unload off.""")
    source: str = "<config>"  # the file it was read from, for messages (not a key)


# ---- values ------------------------------------------------------------------------
class _BadValue(Exception):
    """A converter's complaint; the reader adds file, line and key."""


_constructor = yaml.constructor.SafeConstructor()


def _plain(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise _BadValue(f"expected a single value, got a {_node_kind(node)}")
    return _plain(node)


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def _string(node: yaml.Node) -> str:
    value = _scalar(node)
    if not isinstance(value, str) or not value.strip():
        raise _BadValue(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _int_at_least(low: int, high: int | None = None) -> Callable[[yaml.Node], int]:
    def convert(node: yaml.Node) -> int:
        value = _scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high
        ):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise _BadValue(f"expected an integer {bound}, got {value!r}")
        return value

    return convert


def _seconds(node: yaml.Node) -> float:
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _BadValue(f"expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _bool_or_auto(node: yaml.Node) -> bool | None:
    """true | false | auto or null (None: the daemon decides)."""
    value = _scalar(node)
    if value is None or value == "auto":
        return None
    if not isinstance(value, bool):
        raise _BadValue(f"expected true, false or auto, got {value!r}")
    return value


def _share(node: yaml.Node) -> float:
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value <= MAX_SHARE
    ):
        raise _BadValue(f"expected a number > 0 and <= {MAX_SHARE:g} (a weight relative to "
                        f"the other models' shares), got {value!r}")
    return float(value)


def _one_of(choices: tuple[str, ...], fold: Callable[[str], str] = str) -> Callable:
    def convert(node: yaml.Node) -> str:
        value = _scalar(node)
        if not isinstance(value, str) or fold(value) not in choices:
            raise _BadValue(f"expected one of {', '.join(choices)}, got {value!r}")
        return fold(value)

    return convert


def _string_list(node: yaml.Node) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _BadValue(f"expected a list of strings, got a {_node_kind(node)}")
    return tuple(_string(item) for item in node.value)


def parse_listen(value: Any) -> str:
    """`host:port` (port 0..65535, `[v6]:port` too) or `unix:PATH`; returns it stripped."""
    if not isinstance(value, str) or not value.strip():
        raise _BadValue(f"expected host:port or unix:/path, got {value!r}")
    value = value.strip()
    if value.startswith("unix:"):
        if not value[len("unix:"):].strip("/"):
            raise _BadValue(f"unix socket address {value!r} has no path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise _BadValue(f"expected host:port (port 0-65535) or unix:/path, got {value!r}")
    return value


def _listen(node: yaml.Node) -> str:
    return parse_listen(_scalar(node))


# ---- reading mappings with their lines ---------------------------------------------
_REQUIRED = object()


class _Mapping:
    """One YAML mapping being read into a dataclass; knows its key path and lines."""

    def __init__(self, node: yaml.Node, where: str, source: str):
        self.node = node
        self.where = where  # "" for the top level, "models[0]" below it
        self.source = source
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"expected a mapping of keys, got a {_node_kind(node)}")
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = _plain(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, f"keys must be names, got {key!r}")
            if key in self.items:
                raise self.error(key_node, "duplicate key", key)
            self.items[key] = (key_node, value_node)
        self.used: set[str] = set()

    def path(self, key: str | None) -> str:
        if key is None:
            return self.where or "config"
        return f"{self.where}.{key}" if self.where else key

    def error(self, node: yaml.Node, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{self.source}:{node.start_mark.line + 1}: {self.path(key)}: {message}")

    def take(self, key: str, convert: Callable[[yaml.Node], Any], default: Any = _REQUIRED):
        self.used.add(key)
        if key not in self.items:
            if default is _REQUIRED:
                raise self.error(self.node, f"missing required key {key!r}")
            return default
        value_node = self.items[key][1]
        try:
            return convert(value_node)
        except _BadValue as e:
            raise self.error(value_node, str(e), key) from None

    def node_of(self, key: str) -> yaml.Node | None:
        self.used.add(key)
        return self.items[key][1] if key in self.items else None

    def finish(self) -> None:
        """Fail on the first key nobody asked for: a typo, or a key of a newer version."""
        for key, (key_node, _) in self.items.items():
            if key not in self.used:
                known = ", ".join(sorted(self.used))
                raise self.error(key_node, f"unknown key (known keys here: {known})", key)


# ---- sections ----------------------------------------------------------------------
def _milliseconds(node: yaml.Node) -> float:
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 <= value <= MAX_DELAY_MS_LIMIT
    ):
        raise _BadValue(f"expected milliseconds in [0, {MAX_DELAY_MS_LIMIT:g}], got {value!r}")
    return float(value)


def _model_section(m: _Mapping, key: str, cls: type, converters: dict[str, Callable]) -> Any:
    """A model's optional nested mapping (batching, image_limits); absent -> defaults."""
    node = m.node_of(key)
    if node is None:
        return cls()
    section = _Mapping(node, m.path(key), m.source)
    values = {name: section.take(name, convert, getattr(cls, name))
              for name, convert in converters.items()}
    section.finish()
    return cls(**values)


def _model(node: yaml.Node, where: str, source: str, base_dir: Path) -> ModelConfig:
    m = _Mapping(node, where, source)
    name = m.take("name", _string)
    if not MODEL_NAME.match(name):
        raise m.error(
            m.items["name"][1], f"{name!r} is not a plain name (letters, digits, . _ -)", "name"
        )
    path = Path(m.take("path", _string)).expanduser()
    defaults = ModelConfig  # the dataclass's class attributes are its defaults
    model = ModelConfig(
        name=name,
        path=path if path.is_absolute() else (base_dir / path).resolve(),
        backend=m.take("backend", _one_of(BACKENDS), defaults.backend),
        threads=m.take("threads", _int_at_least(0), defaults.threads),
        spin=m.take("spin", _bool_or_auto, defaults.spin),
        providers=m.take("providers", _string_list, defaults.providers),
        max_concurrent=m.take("max_concurrent", _int_at_least(1), defaults.max_concurrent),
        max_queue=m.take("max_queue", _int_at_least(0), defaults.max_queue),
        max_sequence_length=m.take("max_sequence_length", _int_at_least(0),
                                   defaults.max_sequence_length),
        share=m.take("share", _share, defaults.share),
        priority=m.take("priority", _int_at_least(0, MAX_PRIORITY), defaults.priority),
        batching=_model_section(m, "batching", BatchingConfig, {
            "max_batch": _int_at_least(1, MAX_BATCH_LIMIT), "max_delay_ms": _milliseconds}),
        image_limits=_model_section(m, "image_limits", ImageLimits, {
            "max_bytes": _int_at_least(1, MAX_MESSAGE_BYTES_LIMIT),
            "max_pixels": _int_at_least(1), "max_images": _int_at_least(1, MAX_IMAGES_LIMIT)}),
    )
    m.finish()
    return model


def _models(top: _Mapping, base_dir: Path) -> tuple[ModelConfig, ...]:
    node = top.node_of("models")
    if node is None:
        raise top.error(top.node, "missing required key 'models' (a list of models to serve)")
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise top.error(node, "expected a non-empty list of models", "models")
    models: list[ModelConfig] = []
    for i, item in enumerate(node.value):
        model = _model(item, f"models[{i}]", top.source, base_dir)
        if any(model.name == other.name for other in models):
            raise top.error(item, f"model name {model.name!r} is used twice", f"models[{i}].name")
        models.append(model)
    return tuple(models)


def _logging(top: _Mapping) -> LoggingConfig:
    node = top.node_of("logging")
    if node is None:
        return LoggingConfig()
    m = _Mapping(node, "logging", top.source)
    config = LoggingConfig(
        level=m.take("level", _one_of(LOG_LEVELS, str.upper), LoggingConfig.level),
        format=m.take("format", _one_of(LOG_FORMATS, str.lower), LoggingConfig.format),
    )
    m.finish()
    return config


_POWER_KEY = re.compile(r"^power\.(\w+):")


def _power(top: _Mapping) -> PowerConfig | None:
    """The `power:` section, checked by PowerConfig itself; errors get the key's line."""
    node = top.node_of("power")
    if node is None:
        return None
    m = _Mapping(node, "power", top.source)
    known = {f.name for f in fields(PowerConfig)}
    for key, (key_node, _) in m.items.items():
        if key not in known:
            raise m.error(key_node, f"unknown key (known keys here: {', '.join(sorted(known))})",
                          key)
    try:
        return PowerConfig.from_dict(_plain(node))
    except ConfigError as e:
        named = _POWER_KEY.match(str(e))
        where = m.items[named[1]][1] if named and named[1] in m.items else node
        raise ConfigError(f"{top.source}:{where.start_mark.line + 1}: {e}") from None


def _metrics_listen(node: yaml.Node) -> str:
    listen = _listen(node)
    if listen.startswith("unix:"):
        raise _BadValue(f"expected host:port (the metrics endpoint is HTTP), got {listen!r}")
    return listen


def _metrics(top: _Mapping) -> MetricsConfig | None:
    """The `metrics:` section; absent means no metrics endpoint."""
    node = top.node_of("metrics")
    if node is None:
        return None
    m = _Mapping(node, "metrics", top.source)
    config = MetricsConfig(listen=m.take("listen", _metrics_listen, DEFAULT_METRICS_LISTEN))
    m.finish()
    return config


def _checked_section(top: _Mapping, key: str, from_dict: Callable, base_dir: Path) -> Any:
    """A section its own class validates (`from_dict(data, base_dir)`); errors get a line."""
    node = top.node_of(key)
    if node is None:
        return None
    if not isinstance(node, yaml.MappingNode):
        raise top.error(node, f"expected a mapping of keys, got a {_node_kind(node)}", key)
    m = _Mapping(node, key, top.source)
    try:
        return from_dict(_plain(node), base_dir)
    except ConfigError as e:
        named = re.match(rf"^{key}\.(\w+):", str(e))
        where = m.items[named[1]][1] if named and named[1] in m.items else node
        raise ConfigError(f"{top.source}:{where.start_mark.line + 1}: {e}") from None


# ---- entry points ------------------------------------------------------------------
def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> DaemonConfig:
    """Read config text; `base_dir` anchors relative model paths (default: cwd)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML ({e.problem or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from None
    if root is None:
        raise ConfigError(f"{source}: the config is empty; it needs at least a 'models' list")
    top = _Mapping(root, "", source)
    config = DaemonConfig(
        listen=top.take("listen", _listen, DEFAULT_LISTEN),
        grace_period_s=top.take("grace_period_s", _seconds, DEFAULT_GRACE_PERIOD_S),
        max_message_bytes=top.take(
            "max_message_bytes",
            _int_at_least(1024, MAX_MESSAGE_BYTES_LIMIT),
            DEFAULT_MAX_MESSAGE_BYTES,
        ),
        decode_threads=top.take("decode_threads", _int_at_least(0, 256), 0),
        decode_inline_max_pixels=top.take("decode_inline_max_pixels", _int_at_least(0),
                                          DEFAULT_INLINE_MAX_PIXELS),
        models=_models(top, base_dir or Path.cwd()),
        logging=_logging(top),
        power=_power(top),
        metrics=_metrics(top),
        tls=_checked_section(top, "tls", TLSConfig.from_dict, base_dir or Path.cwd()),
        auth=_checked_section(top, "auth", AuthConfig.from_dict, base_dir or Path.cwd()),
        repository=_checked_section(top, "repository", RepositoryConfig.from_dict,
                                    base_dir or Path.cwd()),
        source=source,
    )
    top.finish()
    return config


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a config file; raises ConfigError naming the file and line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file ({e})") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


def with_listen(config: DaemonConfig, listen: str) -> DaemonConfig:
    """The config with its listen address replaced (the CLI's --listen)."""
    try:
        return replace(config, listen=parse_listen(listen))
    except _BadValue as e:
        raise ConfigError(f"--listen: {e}") from None
