"""smolpack.engine.overlay: per-run overlays copied from a template cached per disk size."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from smolpack.engine.overlay import fresh_overlay
from smolpack.engine.qemu import RootDisk

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def info(path: Path) -> dict[str, object]:
    res = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
    )
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_overlays_are_empty_qcow2_of_the_disk_size_and_independent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    runs = []
    for n in range(2):
        disk = RootDisk(path=tmp_path / "base", size=64 << 20, overlay=tmp_path / f"o{n}.qcow2")
        fresh_overlay(disk)
        runs.append(disk.overlay)
    templates = list((tmp_path / "cache" / "overlay").iterdir())
    assert len(templates) == 1  # made once, then copied
    for overlay in runs:
        got = info(overlay)
        assert (got["format"], got["virtual-size"]) == ("qcow2", 64 << 20)
        assert "backing-filename" not in got  # qemu_argv links the base in
        assert overlay.stat().st_mode & 0o200  # QEMU writes it
    assert runs[0].read_bytes() == runs[1].read_bytes() == templates[0].read_bytes()
    other = RootDisk(path=tmp_path / "base", size=32 << 20, overlay=tmp_path / "o.qcow2")
    fresh_overlay(other)
    assert info(other.overlay)["virtual-size"] == 32 << 20
