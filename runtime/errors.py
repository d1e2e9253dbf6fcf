"""User-facing errors: each one is a message a user can act on.

The CLI prints them as one line; the daemon maps them to gRPC status codes.
"""

from __future__ import annotations


class E2edgeError(Exception):
    """Base of every error whose message is meant for the user."""


class PackageError(E2edgeError):
    """A model package is missing, malformed, or fails its checksums."""


class ConfigError(E2edgeError):
    """A configuration file or value is invalid."""


class InvalidRequest(E2edgeError):
    """A request (or CLI option) has a bad value; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelNotFound(E2edgeError):
    """A request named a model that is not loaded."""


class BackendUnavailable(E2edgeError):
    """A backend (tensorrt, a GPU provider) is not installed or has no device."""
