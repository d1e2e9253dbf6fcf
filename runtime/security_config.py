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

from runtime.errors import ConfigError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False

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
    tokens_file: Path | None = None
    token_env: str | None = None

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
