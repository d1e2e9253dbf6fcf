"""How a client reaches a daemon with TLS and a bearer token (the CLIs' --tls-* / --token).

    security = ClientSecurity(ca=Path("ca.crt"), token="...")   # or from_args(args)
    channel = security.channel("jetson.local:50051", options)    # grpc.Channel

No CA: a plaintext channel (loopback, unix socket). With `ca`: TLS, verifying the
daemon's certificate; `cert` + `key` add a client certificate for mutual TLS. The
token rides on every call as `authorization: Bearer <token>` metadata; prefer the
E2EDGE_TOKEN environment variable to --token, which other users can see in `ps`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from runtime.errors import ConfigError

TOKEN_ENV = "E2EDGE_TOKEN"


@dataclass(frozen=True)
class ClientSecurity:
    ca: Path | None = None  # PEM CA that signed the daemon's certificate -> TLS
    cert: Path | None = None  # PEM client certificate chain (mutual TLS)
    key: Path | None = None  # its PEM private key
    server_name: str | None = None  # the name to verify, when it differs from the target's
    token: str | None = None

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (mutual TLS)")
        if self.cert is not None and self.ca is None:
            raise ConfigError("--tls-cert needs --tls-ca (the CA of the daemon's certificate)")

    def channel(self, target: str, options: list[tuple[str, object]]) -> grpc.Channel:
        if self.ca is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self.ca, "--tls-ca"),
                private_key=_read(self.key, "--tls-key") if self.key else None,
                certificate_chain=_read(self.cert, "--tls-cert") if self.cert else None,
            )
            if self.server_name:
                options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
            channel = grpc.secure_channel(target, credentials, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, BearerToken(self.token))
        return channel

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The auth metadata, for clients that pass it per call (tritonclient's headers)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout,
                            [*(details.metadata or ()), self._entry], details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert, --tls-key, --tls-server-name and --token."""
    group = parser.add_argument_group("security (a daemon with `tls:` / `auth:`)")
    group.add_argument("--tls-ca", type=Path, metavar="PEM",
                       help="CA of the daemon's certificate: connect with TLS")
    group.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="client certificate for mutual TLS (with --tls-key)")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="name to verify in the daemon's certificate (default: the host)")
    group.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                       help=f"bearer token (default: ${TOKEN_ENV}; prefer it, --token "
                            f"shows in `ps`)")


def from_args(args: argparse.Namespace) -> ClientSecurity:
    return ClientSecurity(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                          server_name=args.tls_server_name, token=args.token)
