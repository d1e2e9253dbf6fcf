"""Errors of the export itself (the project's user-facing hierarchy is runtime/errors.py)."""

from __future__ import annotations

from runtime.errors import E2edgeError


class ExportVerificationError(E2edgeError):
    """The exported graph does not compute what its source model computes (LLM or ViT).

    Both exports check the package before it is moved into place, so this error means
    nothing was written.
    """


class CheckpointError(E2edgeError):
    """A checkpoint directory is missing, malformed, or of an unsupported architecture."""
