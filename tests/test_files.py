"""Atomic writing (swudi_lab.files): a target is replaced whole or not at all, no temporary file stays."""

import hashlib
import stat

import numpy as np
import pytest

from swudi_lab.files import (
    AtomicFile,
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
)


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_text_and_bytes_are_written_with_parents_and_mode_644(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    q = atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
    assert q.read_bytes() == b"\x00\x01"
    assert _listing(tmp_path) == ["a", "c.bin"]
    assert sha256_file(q) == hashlib.sha256(b"\x00\x01").hexdigest()


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(target, "w", newline="") as fh:
            fh.write("new, half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["summary.csv"]
    with pytest.raises(ValueError, match="mode 'a'"):
        with atomic_open(target, "a"):
            pass


def test_atomic_path_serves_writers_that_want_a_file_name(tmp_path):
    target = tmp_path / "split.npz"
    with atomic_path(target, suffix=".tmp.npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.npz") and not target.exists()
        np.savez(tmp, x=np.arange(3))
    with np.load(target) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert _listing(tmp_path) == ["split.npz"]


def test_atomic_file_commit_and_abort(tmp_path):
    f = AtomicFile(tmp_path / "w.safetensors")
    f.tmp.write_bytes(b"abc")
    f.abort()
    assert _listing(tmp_path) == []
    g = AtomicFile(tmp_path / "w.safetensors")
    g.tmp.write_bytes(b"abc")
    assert g.commit().read_bytes() == b"abc"
    with pytest.raises(FileNotFoundError, match="nothing to commit"):
        g.commit()


def test_atomic_dir_replaces_a_directory_whole_or_not_at_all(tmp_path):
    d = tmp_path / "seed0"
    with atomic_dir(d) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert _listing(d) == ["manifest.json"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise KeyboardInterrupt
    assert _listing(d) == ["manifest.json"] and _listing(tmp_path) == ["seed0"]
    with atomic_dir(d) as tmp:
        (tmp / "other").write_text("")
    assert _listing(d) == ["other"] and _listing(tmp_path) == ["seed0"]
