"""Data files: turn a name or a path into a local file, downloading official copies on demand.

`resolve_data_file` looks, in this order (DESIGN.md, "Data and demo models"):

1. an explicit path that exists (anything with a directory part is only ever a path);
2. `$E2EDGE_DATA_DIR/<name>` (the Makefile points it at ../shared/data when present);
3. the download cache, `~/.cache/e2edge/<name>` (`$E2EDGE_CACHE_DIR` overrides the folder),
   filled on first use from the file's official source. A download is written to a
   temporary file, checked against the registry's size and checksum, and only then
   renamed into place, so the cache never holds a partial or wrong file.

Files found in the data dir are taken as they are: that folder is the user's, and it may
hold a re-saved copy (see BreastMNIST below).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import E2edgeError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "E2EDGE_DATA_DIR"
CACHE_DIR_ENV = "E2EDGE_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


class DataFileError(E2edgeError):
    """A data file cannot be found, downloaded, or fails its checksum."""


@dataclass(frozen=True)
class DataFile:
    """One file the project can fetch: where from, and what its bytes must hash to.

    `sha256` and `size` describe the file at `url`. Where the publisher only states an
    MD5 (MedMNIST), `md5` carries it and `sha256`/`size` may be None.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    md5: str | None = None
    note: str = ""

    def __post_init__(self):
        if self.sha256 is None and self.md5 is None:
            raise ValueError(f"data file {self.name}: a registry entry needs sha256 or md5")


_MEDMNIST = "https://zenodo.org/records/10519652/files"

DATA_FILES: dict[str, DataFile] = {
    entry.name: entry
    for entry in (
        DataFile(
            name="tinyshakespeare.txt",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            size=1115394,
        ),
        DataFile(
            name="wikitext2_valid.txt",
            url="https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
            sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            size=1121681,
        ),
        DataFile(
            name="retinamnist.npz",
            url=f"{_MEDMNIST}/retinamnist.npz?download=1",
            sha256="254915f5f0a2074665c4676356824cf4ef4a3bcab233894b4bafcaf48962bd69",
            size=3291041,
            md5="bd4c0672f1bba3e3a89f0e4e876791e4",
        ),
        DataFile(
            name="breastmnist.npz",
            url=f"{_MEDMNIST}/breastmnist.npz?download=1",
            # MedMNIST publishes only this MD5 for its file. The copy in ../shared/data was
            # re-saved with flattened labels (sha256 5e68d797...), so it is not the file at
            # `url`; the loaders accept both label shapes.
            sha256=None,
            size=None,
            md5="750601b1f35ba3300ea97c75c52ff8f6",
            note="official file checked by MedMNIST's published MD5",
        ),
        DataFile(
            name="llama2_tokenizer.model",
            url="https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model",
            sha256="9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
            size=499723,
        ),
    )
}


def cache_dir() -> Path:
    """Where downloads go: $E2EDGE_CACHE_DIR, else ~/.cache/e2edge."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else Path.home() / ".cache" / "e2edge"


def resolve_data_file(
    name_or_path: str | Path, *, registry: Mapping[str, DataFile] = DATA_FILES
) -> Path:
    """Return a local path for a data file given by path or by registry name."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if given.name != str(name_or_path) or given.exists():
        # A path with a directory part (or a directory) never falls back to a name lookup:
        # a typo in a path must not silently pick up some other copy.
        raise FileNotFoundError(f"{name_or_path}: no such file")

    name = given.name
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        candidate = Path(data_dir) / name
        if candidate.is_file():
            return candidate

    entry = registry.get(name)
    if entry is None:
        where = f"${DATA_DIR_ENV}={data_dir}" if data_dir else f"${DATA_DIR_ENV} (not set)"
        raise FileNotFoundError(
            f"{name}: not an existing file, not in {where}, and not a known data file "
            f"(known: {', '.join(sorted(registry))})"
        )
    cached = cache_dir() / name
    if cached.is_file():
        return cached
    return download(entry, cached)


def download(entry: DataFile, dest: Path) -> Path:
    """Fetch `entry.url` to `dest` through a checked temporary file; return `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s from %s", entry.name, entry.url)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{entry.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(entry.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        sha256.update(chunk)
                        md5.update(chunk)
                        size += len(chunk)
            except OSError as e:  # URLError and HTTPError are OSErrors
                raise DataFileError(f"{entry.name}: download from {entry.url} failed: {e}") from e
        _check(entry, size=size, sha256=sha256.hexdigest(), md5=md5.hexdigest())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _check(entry: DataFile, *, size: int, sha256: str, md5: str) -> None:
    if entry.size is not None and size != entry.size:
        raise DataFileError(
            f"{entry.name}: downloaded {size} bytes from {entry.url}, expected {entry.size}"
        )
    if entry.sha256 is not None and sha256 != entry.sha256:
        raise DataFileError(
            f"{entry.name}: sha256 mismatch for {entry.url}: got {sha256}, expected {entry.sha256}"
        )
    if entry.md5 is not None and md5 != entry.md5:
        raise DataFileError(
            f"{entry.name}: md5 mismatch for {entry.url}: got {md5}, expected {entry.md5}"
        )
