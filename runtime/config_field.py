"""A documented setting of the daemon's YAML config.

Every key of the config is a field of a frozen dataclass (runtime/config.py and the
sections it reads: power, tls, auth, repository, batching, image_limits) declared with
`setting(...)`, which keeps what a user needs to know about the key beside its default.
docs/reference/config.md is generated from these fields (`python -m e2edge.reference`),
so the reference says what the code does and a test fails when it falls behind.

    listen: str = setting(DEFAULT_LISTEN, doc="host:port or unix:/path the daemon serves")
    cert: Path = setting(doc="PEM certificate chain", example="/etc/e2edge/tls/server.crt")
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field
from typing import Any

DOC = "doc"
EXAMPLE = "example"
DEFAULT_DOC = "default_doc"


def setting(default: Any = MISSING, *, doc: str, example: Any = MISSING,
            default_doc: str | None = None) -> Any:
    """A dataclass field with its documentation; `example` is the value the reference's
    example config shows where the default will not do (a required key, a path), and
    `default_doc` says what an absent key means where the reader does not simply take
    the field's default."""
    metadata = {DOC: " ".join(doc.split())}
    if example is not MISSING:
        metadata[EXAMPLE] = example
    if default_doc is not None:
        metadata[DEFAULT_DOC] = default_doc
    return field(default=default, metadata=metadata)


def section(factory: Any, *, doc: str) -> Any:
    """A nested mapping whose absence means `factory()` (its keys' defaults)."""
    return field(default_factory=factory, metadata={DOC: " ".join(doc.split())})


def doc_of(config_field: Field) -> str | None:
    """The field's documentation; None for a field that is not a key of the YAML file."""
    return config_field.metadata.get(DOC)
