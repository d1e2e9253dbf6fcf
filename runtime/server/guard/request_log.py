"""The daemon's structured logs: one line per request, as text or as JSON.

Every finished request (served, refused or failed) is one record on the
`e2edge.requests` logger:

    text: request id=7f3a.. model=demo method=Generate status=OK finish=length
          prompt_tokens=5 completion_tokens=128 queue_ms=0.1 ttft_ms=4.2 latency_ms=96.0
    json: {"ts": "...", "level": "INFO", "logger": "e2edge.requests", "msg": "request",
           "request_id": "7f3a..", "model": "demo", "status": "OK", ...}

`configure_logging` installs the formatter the config asks for on the root logger,
so the daemon's other lines (start, ready, drain) come out in the same format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from runtime.config import LoggingConfig

REQUEST_LOGGER = "e2edge.requests"
_RECORD_ATTR = "e2edge_request"  # where a request record rides on a LogRecord

log = logging.getLogger(REQUEST_LOGGER)


def new_request_id() -> str:
    """The daemon's id for a request whose client gave none: 16 hex digits."""
    return uuid.uuid4().hex[:16]


@dataclass
class RequestRecord:
    """What one request did; filled in as it goes, logged once at the end."""

    request_id: str
    method: str
    model: str = ""
    peer: str = ""
    status: str = "OK"  # the gRPC status code name
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float = 0.0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    latency_s: float = 0.0
    error: str = ""

    @classmethod
    def begin(cls, method: str, model: str = "", peer: str = "") -> RequestRecord:
        """A record under a fresh id (replaced by the client's own id once it is checked)."""
        return cls(new_request_id(), method, model=model, peer=peer)

    def to_dict(self) -> dict:
        return {key: round(v, 6) if isinstance(v, float) else v
                for key, v in asdict(self).items()}

    def to_text(self) -> str:
        parts = [f"id={_safe(self.request_id)}", f"model={_safe(self.model) or '-'}",
                 f"method={self.method}", f"status={self.status}"]
        if self.finish_reason:
            parts.append(f"finish={self.finish_reason}")
        if self.method == "Generate" and self.status == "OK":
            parts += [
                f"prompt_tokens={self.prompt_tokens}",
                f"completion_tokens={self.completion_tokens}",
                f"queue_ms={self.queue_s * 1e3:.1f}",
                f"ttft_ms={self.time_to_first_token_s * 1e3:.1f}",
                f"tok_s={self.decode_tokens_per_s:.1f}",
            ]
        parts.append(f"latency_ms={self.latency_s * 1e3:.1f}")
        if self.peer:
            parts.append(f"peer={_safe(self.peer)}")
        if self.error:
            parts.append(f"error={json.dumps(self.error)}")
        return " ".join(parts)


_PLAIN = re.compile(r"^[\w.:/@\[\]+-]*$")


def _safe(value: str) -> str:
    """Client-chosen text (ids, model names) quoted unless plain: one request, one line."""
    return value if _PLAIN.match(value) else json.dumps(value)


def log_request(record: RequestRecord) -> None:
    level = logging.ERROR if record.status == "INTERNAL" else logging.INFO
    if log.isEnabledFor(level):  # the text costs more than the check, per request
        log.log(level, "request %s", record.to_text(), extra={_RECORD_ATTR: record})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a request record's fields sit at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        request = getattr(record, _RECORD_ATTR, None)
        if isinstance(request, RequestRecord):
            out["msg"] = "request"
            out.update(request.to_dict())
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(config: LoggingConfig, stream=None) -> None:
    """Route every logger to `stream` (stderr) at the configured level and format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else
                         logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
