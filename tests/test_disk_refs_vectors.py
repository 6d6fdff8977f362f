"""formats/vectors/disk-refs: split_image reproduces the vectors; the reader refuses each
invalid blob with the message the generator wrote by hand from the spec."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from smolpack.engine.disk_refs import DiskRefs, apply_refs, split_image
from smolpack.errors import EngineError

VECTORS = Path(__file__).resolve().parents[1] / "formats" / "vectors" / "disk-refs"
CASES = json.loads((VECTORS / "invalid" / "cases.json").read_text())


def test_committed_vectors_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("disk_refs_generate", VECTORS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name, data in module.build().items():
        assert (VECTORS / name).read_bytes() == data, name


def test_split_image_writes_the_vectors_stored_image_and_blob(tmp_path: Path) -> None:
    refs = split_image(VECTORS / "image.bin", VECTORS / "disk.bin", tmp_path / "stored")
    assert (tmp_path / "stored").read_bytes() == (VECTORS / "stored.bin").read_bytes()
    assert refs.encode() == (VECTORS / "refs.bin").read_bytes()


def rebuild(blob: bytes, label: str, tmp_path: Path) -> bytes:
    disk = VECTORS / "disk.bin"
    refs = DiskRefs.decode(blob, image_size=65536, disk_size=disk.stat().st_size, label=label)
    out = tmp_path / "image"
    out.write_bytes((VECTORS / "stored.bin").read_bytes())
    fd, dfd = os.open(out, os.O_RDWR), os.open(disk, os.O_RDONLY)
    try:
        apply_refs(fd, refs, dfd, 0, label)
    finally:
        os.close(fd)
        os.close(dfd)
    return out.read_bytes()


def test_the_valid_blob_rebuilds_the_image(tmp_path: Path) -> None:
    got = rebuild((VECTORS / "refs.bin").read_bytes(), "refs.bin", tmp_path)
    assert got == (VECTORS / "image.bin").read_bytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_blobs_are_refused(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    assert (case["error"], case["exit"]) == ("EngineError", EngineError.exit_code)
    with pytest.raises(EngineError) as info:
        rebuild((VECTORS / "invalid" / name).read_bytes(), name, tmp_path)
    assert str(info.value.message).startswith(case["message"])
    assert case["operation"] == "apply" or str(info.value.message) == case["message"]
