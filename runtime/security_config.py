"""The `tls:` and `auth:` sections of the daemon's config, validated once here.

    tls:                                  # no section = plaintext (fine on loopback / unix)
      cert: /etc/e2edge/tls/server.crt    # PEM chain the daemon presents
      key: /etc/e2edge/tls/server.key     # its PEM private key
      client_ca: /etc/e2edge/tls/ca.crt   # optional: PEM CA(s) that sign client certs (mTLS)
      require_client_cert: true           # default: true when client_ca is set
    auth:                                 # no section = no tokens asked
      tokens_file: /etc/e2edge/tokens     # one bearer token per line; '#' starts a comment
      token_env: E2EDGE_TOKEN             # and/or a token from this environment variable

Relative paths start at the config file's folder, like model paths. Only the shape
is checked here; the files are read when the server is built (and on every reload),
so a missing certificate is an error naming the file at start, not at the first call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.config_field import setting
from runtime.errors import ConfigError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TLSConfig:
    """The daemon's TLS credentials (runtime/server/guard/security.py)."""

    cert: Path = setting(example="/etc/e2edge/tls/server.crt", doc="""
        PEM certificate chain the daemon presents. Required. Relative paths here start at
        the config file's folder; the files are read at start and on every reload, so a
        missing one is an error naming it at start.""")
    key: Path = setting(example="/etc/e2edge/tls/server.key", doc="""
        Its PEM private key. Required.""")
    client_ca: Path | None = setting(None, example="/etc/e2edge/tls/clients-ca.crt", doc="""
        PEM CA certificate(s) that sign the client certificates: mutual TLS. Absent = the
        daemon asks no client certificate.""")
    require_client_cert: bool = setting(
        False, example=True, default_doc="true with `client_ca`, else false", doc="""
        true: a client without a certificate signed by `client_ca` fails the handshake
        before any call runs; false: a client certificate is verified when one is
        presented. true needs `client_ca`.""")

    @classmethod
    def from_dict(cls, data: Mapping, base_dir: Path) -> TLSConfig:
        _known_keys("tls", data, ("cert", "key", "client_ca", "require_client_cert"))
        client_ca = _path("tls", data, "client_ca", base_dir, required=False)
        require = data.get("require_client_cert", client_ca is not None)
        if not isinstance(require, bool):
            raise ConfigError(f"tls.require_client_cert: expected true or false, got {require!r}")
        if require and client_ca is None:
            raise ConfigError("tls.require_client_cert: needs tls.client_ca, the CA that "
                              "signs the client certificates")
        return cls(
            cert=_path("tls", data, "cert", base_dir),
            key=_path("tls", data, "key", base_dir),
            client_ca=client_ca,
            require_client_cert=require,
        )


@dataclass(frozen=True)
class AuthConfig:
    """Where the bearer tokens come from: a file, an environment variable, or both."""

    tokens_file: Path | None = setting(None, example="/etc/e2edge/tokens", doc="""
        File of tokens, one a line; `#` starts a comment. Relative paths start at the
        config file's folder. Read at start and on every reload (SIGHUP), so tokens
        change without a restart.""")
    token_env: str | None = setting(None, example="E2EDGE_TOKEN", doc="""
        Name of an environment variable that holds one more token; it must be set and not
        empty when the daemon starts. At least one of `tokens_file` and `token_env` is
        required.""")

    @classmethod
    def from_dict(cls, data: Mapping, base_dir: Path) -> AuthConfig:
        _known_keys("auth", data, ("tokens_file", "token_env"))
        token_env = data.get("token_env")
        if token_env is not None and (not isinstance(token_env, str)
                                      or not ENV_NAME.match(token_env)):
            raise ConfigError(f"auth.token_env: expected an environment variable name, "
                              f"got {token_env!r}")
        config = cls(tokens_file=_path("auth", data, "tokens_file", base_dir, required=False),
                     token_env=token_env)
        if config.tokens_file is None and config.token_env is None:
            raise ConfigError("auth: needs tokens_file or token_env (or drop the section "
                              "to serve without tokens)")
        return config


def _known_keys(section: str, data: Mapping, known: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(data).__name__}")
    for key in data:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known keys here: "
                              f"{', '.join(sorted(known))})")


def _path(section: str, data: Mapping, key: str, base_dir: Path,
          required: bool = True) -> Path | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{section}.{key}: missing required key")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{section}.{key}: expected a file path, got {value!r}")
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()
