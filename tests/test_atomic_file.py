"""AtomicFile: the target appears complete or not at all, and no temporary is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from smolpack.atomic_file import AtomicFile


def test_commit_sets_length_mode_and_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents that are longer")
    with AtomicFile(target) as f:
        f.pwrite(b"abc", 0)
        f.pwrite(b"xyz", 10)
        assert target.read_bytes() == b"old contents that are longer"  # untouched until commit
        f.commit(size=16, mode=0o750)
    assert target.read_bytes() == b"abc" + bytes(7) + b"xyz" + bytes(3)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert os.listdir(tmp_path) == ["out.bin"]


def test_an_exception_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"keep me")
    with pytest.raises(KeyboardInterrupt), AtomicFile(target) as f:
        f.pwrite(b"partial", 0)
        raise KeyboardInterrupt
    assert target.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_the_temporary_is_hidden_beside_the_target(tmp_path: Path) -> None:
    f = AtomicFile(tmp_path / "tool")
    try:
        assert Path(f.tmp).parent == tmp_path
        assert Path(f.tmp).name.startswith(".tool.tmp-")
    finally:
        f.abort()
    assert os.listdir(tmp_path) == []


def test_a_failed_commit_removes_the_temporary(tmp_path: Path) -> None:
    # Renaming a file over a non-empty directory fails; nothing may be left behind.
    target = tmp_path / "busy"
    (target / "inner").mkdir(parents=True)
    f = AtomicFile(target)
    with pytest.raises(OSError):
        f.commit(size=0, mode=0o644)
    assert sorted(os.listdir(tmp_path)) == ["busy"]
