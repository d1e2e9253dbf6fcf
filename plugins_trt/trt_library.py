"""The TensorRT library in this process: imported once with its version checked, one
logger for the whole process, and the Builder and Runtime made with it.

TensorRT keeps one logger per process (the first one handed to a Builder or Runtime
wins), so e2edge makes exactly one, on first use, and routes its lines to Python
logging. An operation that wants TensorRT's own error text in its exception (a build,
a deserialisation, an execution) opens `captured_errors()` around the calls and reads
what was logged while it ran.

Supported: TensorRT >= 10.0 (IPluginV3 plugins, JetPack 6 ships 10.3) and < 11 (the
builder sets precision with BuilderFlag.FP16, which TensorRT 11 removed with weakly
typed networks). Importing this module imports nothing of TensorRT.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime.errors import BackendUnavailable

log = logging.getLogger(__name__)

LOWEST = (10, 0)  # first release with IPluginV3
BELOW = (11, 0)  # TensorRT 11 builds strongly typed networks only
REQUIREMENT = "tensorrt>=10.0,<11"  # as setup.cfg's tensorrt extra writes it
WITHOUT_IT = "the onnxruntime backend runs the package without it"

# TensorRT's severities -> logging levels; its INFO lines come by the hundred per build
LOG_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}


# ---- import and version --------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(text.split())


def import_problem(error: BaseException) -> str:
    """The one-line reason for a failed `import tensorrt`, with the error's own text."""
    if isinstance(error, ModuleNotFoundError) and error.name == "tensorrt":
        return (
            f"tensorrt is not installed: building or running TensorRT engines needs "
            f"{REQUIREMENT} (JetPack 6 ships TensorRT 10.3; elsewhere `pip install "
            f"'{REQUIREMENT}'`) and an NVIDIA GPU; {WITHOUT_IT}"
        )
    return (
        f"tensorrt is installed but cannot be imported ({type(error).__name__}: "
        f"{_one_line(str(error))}): its Python bindings need TensorRT's libraries "
        f"(libnvinfer) of the same version on the library path; {WITHOUT_IT}"
    )


def version_problem(version: str) -> str | None:
    """Why this TensorRT version cannot be used, or None when it is supported."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        return f"cannot read TensorRT's version {version!r}; e2edge needs {REQUIREMENT}"
    major_minor = (int(found[1]), int(found[2]))
    if major_minor < LOWEST:
        return (
            f"TensorRT {version} is too old: e2edge needs {REQUIREMENT} (its plugins are "
            "IPluginV3, new in TensorRT 10)"
        )
    if major_minor >= BELOW:
        return (
            f"TensorRT {version} is not supported: e2edge needs {REQUIREMENT} (TensorRT 11 "
            "builds strongly typed networks only, and e2edge's builder sets fp16 precision "
            "by flag)"
        )
    return None


def require_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailable saying in one line why not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: a library that ctypes could not load
        raise BackendUnavailable(import_problem(e)) from e
    problem = version_problem(trt.__version__)
    if problem is not None:
        raise BackendUnavailable(problem)
    return trt


# ---- the one logger ------------------------------------------------------------------
class LogRouter:
    """Where TensorRT's log lines go: Python logging, and the errors to the open captures.

    An error goes to the innermost capture of the thread that logged it; an error logged
    on a thread with no capture (one of TensorRT's own) goes to every open capture.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, list[list[str]]] = {}  # thread id -> its captures, innermost last

    def emit(self, severity: str, message: str) -> None:
        level = LOG_LEVELS.get(severity, logging.DEBUG)
        log.log(level, "TensorRT: %s", message)
        if level < logging.ERROR:
            return
        with self._lock:
            mine = self._open.get(threading.get_ident())
            targets = [mine[-1]] if mine else [stack[-1] for stack in self._open.values()]
            for errors in targets:
                errors.append(message)

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        """The errors TensorRT logs while the block runs, in order."""
        errors: list[str] = []
        thread = threading.get_ident()
        with self._lock:
            self._open.setdefault(thread, []).append(errors)
        try:
            yield errors
        finally:
            with self._lock:
                stack = self._open[thread]
                stack.pop()  # blocks nest, so this block's list is the last
                if not stack:
                    del self._open[thread]


ROUTER = LogRouter()
captured_errors = ROUTER.capture
_logger: Any = None
_logger_lock = threading.Lock()


def process_logger(trt: Any) -> Any:
    """The process's one trt.ILogger, made on first use; it forwards to ROUTER."""
    global _logger
    with _logger_lock:
        if _logger is None:

            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    ROUTER.emit(severity.name, msg)

            _logger = _Logger()
    return _logger


# ---- Builder and Runtime -------------------------------------------------------------
def creation_failure(what: str, logged: list[str], error: BaseException) -> str:
    """One line for a Builder / Runtime TensorRT could not make: the bindings raise a bare
    TypeError (its factory returned nothing), which happens when CUDA cannot be
    initialised; TensorRT's own log says why."""
    detail = "; ".join(logged) or f"{type(error).__name__}: {error}"
    return _one_line(
        f"TensorRT could not create its {what}, which happens when CUDA cannot be "
        f"initialised ({detail}); check that the NVIDIA driver is loaded and a GPU is "
        f"visible to this process; {WITHOUT_IT}"
    )


def _create(factory: Any, what: str, logger: Any) -> Any:
    with captured_errors() as errors:
        try:
            return factory(logger)
        except TypeError as e:
            raise BackendUnavailable(creation_failure(what, errors, e)) from e


def create_builder(trt: Any) -> Any:
    """trt.Builder on the process logger; BackendUnavailable when CUDA is not usable."""
    return _create(trt.Builder, "Builder", process_logger(trt))


def create_runtime(trt: Any) -> Any:
    """trt.Runtime on the process logger; BackendUnavailable when CUDA is not usable."""
    return _create(trt.Runtime, "Runtime", process_logger(trt))
