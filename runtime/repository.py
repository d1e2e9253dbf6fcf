"""The model repository: folders of packages that KServe's RepositoryModelLoad may load.

    repository:                       # no section: repository load/unload is off
      directories:                    # each holds packages as <dir>/<model name>/
        - /var/lib/e2edge/models

A model name is only ever a single plain path component (letters, digits, `. _ -`,
starting with a letter or digit), and the package it names must resolve inside one
of these directories: `../etc`, absolute paths and symlinks that leave the folder are
refused, so a client can load nothing but the packages an operator put there. The
package itself is then verified (manifest and every file's sha256) by the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.config_field import setting
from runtime.errors import ConfigError, InvalidRequest, ModelNotFound

MANIFEST = "manifest.json"
# The same rule as runtime.config.MODEL_NAME (config names and repository names meet).
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RepositoryConfig:
    """The folders KServe's repository calls may load packages from."""

    directories: tuple[Path, ...] = setting(example=("/var/lib/e2edge/models",), doc="""
        A non-empty list of folders, each holding packages as `FOLDER/NAME/`; a model name
        is one plain path component, and a package must resolve inside its folder
        (`..`, absolute paths and symlinks that leave it are refused). Relative paths
        start at the config file's folder. Required.""")

    @classmethod
    def from_dict(cls, data: Mapping, base_dir: Path) -> RepositoryConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"repository: expected a mapping of keys, got "
                              f"{type(data).__name__}")
        for key in data:
            if key != "directories":
                raise ConfigError(f"repository.{key}: unknown key (known keys here: "
                                  f"directories)")
        dirs = data.get("directories")
        if not isinstance(dirs, list) or not dirs or not all(
                isinstance(d, str) and d.strip() for d in dirs):
            raise ConfigError(f"repository.directories: expected a non-empty list of "
                              f"folders, got {dirs!r}")
        paths = []
        for d in dirs:
            path = Path(d.strip()).expanduser()
            paths.append(path if path.is_absolute() else (base_dir / path).resolve())
        return cls(directories=tuple(paths))


def check_model_name(name: str, field: str = "model_name") -> str:
    if not PLAIN_NAME.match(name or ""):
        raise InvalidRequest(field, f"{name!r} is not a plain model name (letters, digits, "
                                    f". _ -, starting with a letter or digit; no paths)")
    return name


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(directory.resolve())
    except (OSError, ValueError):
        return False
    return True


def find_package(config: RepositoryConfig, name: str, repository: str = "") -> Path:
    """The package folder for `name` in the first directory that has one.

    `repository` (KServe's repository_name) narrows the search to the directory with
    that folder name; "" searches them all. ModelNotFound when none has it.
    """
    check_model_name(name)
    for directory in directories(config, repository):
        candidate = directory / name
        if (candidate / MANIFEST).is_file() and _inside(candidate, directory):
            return candidate
    where = ", ".join(str(d) for d in directories(config, repository))
    raise ModelNotFound(f"no package {name!r} in the model repository ({where})")


def directories(config: RepositoryConfig, repository: str = "") -> list[Path]:
    if not repository:
        return list(config.directories)
    chosen = [d for d in config.directories if d.name == repository]
    if not chosen:
        names = ", ".join(d.name for d in config.directories)
        raise ModelNotFound(f"no repository {repository!r} (repositories: {names})")
    return chosen


def list_packages(config: RepositoryConfig, repository: str = "") -> dict[str, Path]:
    """name -> package folder of every package in the repository (the first one wins)."""
    found: dict[str, Path] = {}
    for directory in directories(config, repository):
        if not directory.is_dir():
            continue
        for candidate in sorted(directory.iterdir()):
            if (PLAIN_NAME.match(candidate.name) and candidate.name not in found
                    and (candidate / MANIFEST).is_file() and _inside(candidate, directory)):
                found[candidate.name] = candidate
    return found
