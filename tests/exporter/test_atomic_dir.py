"""The one atomic directory writer under packages and checkpoints."""

from __future__ import annotations

import os

import pytest

from exporter.atomic_dir import AtomicDirectory


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_commit_writes_a_new_directory_and_leaves_no_temporary_one(tmp_path):
    out = tmp_path / "nested" / "ckpt"
    with AtomicDirectory(out) as target:
        assert target.dir.parent == out.parent and target.dir.name.startswith(".ckpt.tmp-")
        (target.dir / "a.txt").write_text("new")
        assert target.commit() == out.resolve()
    assert (out / "a.txt").read_text() == "new"
    assert _siblings(out) == ["ckpt"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert out.stat().st_mode == plain.stat().st_mode  # an ordinary directory, not mkdtemp's


def test_commit_replaces_an_existing_directory(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with AtomicDirectory(out) as target:
        (target.dir / "new.txt").write_text("new")
        target.commit()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(out) == ["pkg"]


def test_a_failure_before_commit_leaves_the_old_directory_untouched(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"), AtomicDirectory(out) as target:
        (target.dir / "new.txt").write_text("new")
        raise RuntimeError("half way")
    assert (out / "old.txt").read_text() == "old"
    assert _siblings(out) == ["pkg"]


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace

    def refuse_the_new_one(src, dst):
        if ".tmp-" in str(src):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_new_one)
    with pytest.raises(OSError, match="disk full"), AtomicDirectory(out) as target:
        (target.dir / "new.txt").write_text("new")
        target.commit()
    assert (out / "old.txt").read_text() == "old"
    assert _siblings(out) == ["pkg"]
