"""Who may talk to the daemon: TLS / mutual TLS credentials and bearer-token auth.

TLS (config `tls:`) is the transport: the daemon presents `cert`; with `client_ca`
it also asks for a client certificate signed by that CA, and with
`require_client_cert` (the default once a client CA is set) a client without one
fails the handshake before any RPC runs.

Tokens (config `auth:`) are checked by `TokenAuth`, built into the handlers of every
service: each call must carry the metadata
`authorization: Bearer <token>` with one of the configured tokens, else it ends with
UNAUTHENTICATED before its request is even parsed. Tokens are compared as SHA-256
digests with `hmac.compare_digest`, so timing tells nothing about a near miss.

Open without a token, on purpose: the liveness/readiness probes, i.e.
`grpc.health.v1.Health` and KServe's `ServerLive` / `ServerReady`. systemd, load
balancers and Kubernetes probe them without credentials, and they reveal only
SERVING or not. Everything else (generation, models, metadata, repository control,
reflection) needs a token.

A token on an unencrypted TCP connection can be sniffed: use tokens with TLS, or
on loopback / a unix socket only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from runtime.errors import ConfigError
from runtime.security_config import AuthConfig, TLSConfig
from runtime.server.guard.request_log import RequestRecord, log_request

log = logging.getLogger("e2edge.server")

AUTH_METADATA_KEY = "authorization"
MIN_TOKEN_CHARS = 16
# Full gRPC method names served without a token (probes; see the module docstring).
OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})


# ---- TLS ---------------------------------------------------------------------------
def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"tls: cannot read the {what} {path} ({e.strerror or e})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"tls: the {what} {path} is not PEM (no -----BEGIN line)")
    return data


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """The daemon's TLS credentials from the config's files (read now)."""
    chain = _read_pem(tls.cert, "certificate")
    key = _read_pem(tls.key, "private key")
    client_ca = _read_pem(tls.client_ca, "client CA") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=tls.require_client_cert,
    )


# ---- tokens ------------------------------------------------------------------------
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _check_token(token: str, where: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters "
                          f"without spaces (e.g. `openssl rand -hex 32`)")
    return token


def load_tokens(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Every token the config grants: the tokens file's lines and the environment's one."""
    environ = os.environ if environ is None else environ
    tokens: set[str] = set()
    if auth.tokens_file is not None:
        try:
            text = auth.tokens_file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ConfigError(f"auth.tokens_file: cannot read {auth.tokens_file} "
                              f"({reason})") from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.add(_check_token(line, f"{auth.tokens_file}:{number}"))
    if auth.token_env is not None:
        value = environ.get(auth.token_env, "").strip()
        if not value:
            raise ConfigError(f"auth.token_env: the environment variable {auth.token_env} "
                              f"is not set or empty")
        tokens.add(_check_token(value, f"auth.token_env ({auth.token_env})"))
    if not tokens:
        raise ConfigError(f"auth: {auth.tokens_file} holds no token; with no token nobody "
                          f"could call the daemon")
    return frozenset(tokens)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata or ():
        if key == AUTH_METADATA_KEY and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenAuth:
    """Asks every call but the probes for a bearer token; off while it has no tokens.

    `set_tokens` swaps the token set in place (a SIGHUP reload), so one TokenAuth
    serves the daemon's whole life. Every handler checks it through `check` before
    it parses anything (runtime/server/guard/request_parsing.py builds that in).
    """

    def __init__(self, tokens: Iterable[str] | None = None):
        self._digests: tuple[bytes, ...] | None = None
        self.set_tokens(tokens)

    @property
    def enabled(self) -> bool:
        return self._digests is not None

    def set_tokens(self, tokens: Iterable[str] | None) -> None:
        self._digests = None if tokens is None else tuple(_digest(t) for t in tokens)

    def allows(self, method: str, metadata) -> bool:
        if self._digests is None or method in OPEN_METHODS:
            return True
        token = bearer_token(metadata)
        if token is None:
            return False
        presented = _digest(token)
        matched = False
        for digest in self._digests:  # no early exit: the time does not depend on which
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """End the call with UNAUTHENTICATED (and log it) unless it may go on."""
        if self._digests is None or method in OPEN_METHODS:
            return
        metadata = context.invocation_metadata()
        if self.allows(method, metadata):
            return
        reason = "missing bearer token" if bearer_token(metadata) is None else "unknown token"
        record = RequestRecord.begin(method.rsplit("/", 1)[-1], peer=context.peer())
        record.status, record.error = "UNAUTHENTICATED", reason
        log_request(record)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            f"{reason}: this daemon needs `authorization: Bearer <token>` "
                            f"metadata (e2edge CLIs: --token or E2EDGE_TOKEN)")


def token_auth(auth: AuthConfig | None) -> TokenAuth:
    """The token check for a config's `auth:` (disabled without one)."""
    if auth is None:
        return TokenAuth(None)
    tokens = load_tokens(auth)
    log.info("bearer-token auth on: %d token(s); probes stay open", len(tokens))
    return TokenAuth(tokens)


def bind(server: grpc.aio.Server, listen: str, tls: TLSConfig | None) -> int:
    """Add the listening address, with TLS when the config has it; returns the port."""
    if tls is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, server_credentials(tls))
