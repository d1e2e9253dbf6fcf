"""resolve_data_file: explicit path, $E2EDGE_DATA_DIR, and checked downloads (loopback only)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from e2edge.data import DATA_FILES, DataFileError, resolve_data_file


@pytest.fixture
def no_data_dir(monkeypatch, tmp_path):
    """No $E2EDGE_DATA_DIR, and an empty download cache in tmp."""
    monkeypatch.delenv("E2EDGE_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("E2EDGE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def file_server(data_dir):
    """An HTTP server on 127.0.0.1 serving the offline data folder; yields its base URL."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(data_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _local_entry(name: str, base_url: str, **changes):
    return dataclasses.replace(DATA_FILES[name], url=f"{base_url}/{name}", **changes)


def test_explicit_path_is_returned_as_is(tmp_path):
    corpus = tmp_path / "my corpus.txt"
    corpus.write_text("hello")
    assert resolve_data_file(corpus) == corpus
    assert resolve_data_file(str(corpus)) == corpus


def test_missing_explicit_path_is_an_error_not_a_lookup(no_data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_data_file(tmp_path / "nowhere" / "tinyshakespeare.txt")


def test_name_found_in_data_dir(monkeypatch, data_dir):
    monkeypatch.setenv("E2EDGE_DATA_DIR", str(data_dir))
    assert resolve_data_file("tinyshakespeare.txt") == data_dir / "tinyshakespeare.txt"


def test_unknown_name_without_data_dir_names_the_variable(no_data_dir):
    with pytest.raises(FileNotFoundError, match=r"E2EDGE_DATA_DIR.*not set.*known:.*tinyshake"):
        resolve_data_file("no_such_corpus.txt")


def test_registry_matches_the_byte_identical_shared_copies(data_dir):
    for entry in DATA_FILES.values():
        data = (data_dir / entry.name).read_bytes()
        if entry.name == "breastmnist.npz":
            # The shared copy is a re-save, so it must NOT pass as the official file.
            assert hashlib.md5(data).hexdigest() != entry.md5
            continue
        assert len(data) == entry.size, entry.name
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.name


def test_download_is_checked_cached_and_reused(no_data_dir, data_dir, file_server):
    name = "llama2_tokenizer.model"
    registry = {name: _local_entry(name, file_server)}

    path = resolve_data_file(name, registry=registry)

    assert path == no_data_dir / name
    assert path.read_bytes() == (data_dir / name).read_bytes()
    assert sorted(p.name for p in no_data_dir.iterdir()) == [name]  # no temporary left
    # A second call must come from the cache: an unreachable URL proves it.
    offline = {name: dataclasses.replace(registry[name], url="http://127.0.0.1:9/none")}
    assert resolve_data_file(name, registry=offline) == path


def test_checksum_mismatch_leaves_nothing_behind(no_data_dir, file_server):
    name = "llama2_tokenizer.model"
    registry = {name: _local_entry(name, file_server, sha256="0" * 64)}

    with pytest.raises(DataFileError, match="sha256 mismatch"):
        resolve_data_file(name, registry=registry)

    assert list(no_data_dir.iterdir()) == []


def test_md5_only_entry_rejects_the_resaved_breastmnist(no_data_dir, file_server):
    name = "breastmnist.npz"
    registry = {name: _local_entry(name, file_server)}

    with pytest.raises(DataFileError, match="md5 mismatch"):
        resolve_data_file(name, registry=registry)

    assert list(no_data_dir.iterdir()) == []


def test_http_error_is_a_clear_error(no_data_dir, file_server):
    name = "tinyshakespeare.txt"
    registry = {name: dataclasses.replace(DATA_FILES[name], url=f"{file_server}/absent.txt")}

    with pytest.raises(DataFileError, match=r"tinyshakespeare.txt: download from .* failed"):
        resolve_data_file(name, registry=registry)

    assert list(no_data_dir.iterdir()) == []
