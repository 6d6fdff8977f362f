"""The run's disk overlay is written without qemu-img and reads as qemu-img's own would."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from smolpack.engine.qcow2 import empty_qcow2, write_empty_qcow2

QEMU_IMG = shutil.which("qemu-img")  # a test oracle only; runs do not need it any more


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (qemu-utils) is the oracle here")
@pytest.mark.parametrize("size", [4096, 100 << 20, (1 << 30) + 512, 5 << 40])
def test_same_image_as_qemu_img_create(tmp_path: Path, size: int) -> None:
    ours, ref = tmp_path / "ours.qcow2", tmp_path / "ref.qcow2"
    write_empty_qcow2(ours, size)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", ref, str(size)], check=True)
    check = subprocess.run([QEMU_IMG, "check", ours], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    info = json.loads(
        subprocess.run(
            [QEMU_IMG, "info", "--output=json", ours], capture_output=True, check=True
        ).stdout
    )
    assert (info["virtual-size"], info["format"]) == (size, "qcow2")
    # Byte for byte what qemu-img writes, except its optional feature-name table (at 112).
    theirs, mine = ref.read_bytes(), ours.read_bytes()
    assert (mine[:104], mine[0x10000:]) == (theirs[:104], theirs[0x10000:])


def test_refuses_to_overwrite_and_absurd_sizes(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_empty_qcow2(tmp_path / "x", 4096)
    assert (tmp_path / "x").read_bytes() == b"keep"
    with pytest.raises(ValueError):
        empty_qcow2(0)
