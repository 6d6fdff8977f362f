"""smolpack.engine.disk_refs: RAM pages stored as disk block references (formats/disk-refs.md)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from payload_helpers import allocated, make_sparse

from smolpack.engine.disk_refs import HEADER_SIZE, PAGE, DiskRefs, apply_refs, split_image
from smolpack.errors import EngineError

MIB = 1 << 20


def apply_to(residual: Path, refs: DiskRefs, disk: Path, offset: int = 0) -> None:
    """apply_refs on files: the disk read at `offset`, the residual written in place."""
    fd = os.open(residual, os.O_RDWR)
    dfd = os.open(disk, os.O_RDONLY)
    try:
        apply_refs(fd, refs, dfd, offset, "ram")
    finally:
        os.close(fd)
        os.close(dfd)


def make_inputs(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A 2 MiB disk of random blocks and a 4 MiB RAM image: 100 pages copied from the disk
    (a run of 40 in order, 60 scattered), 20 pages of its own, the rest zero."""
    rng = random.Random(7)
    disk_blocks = [rng.randbytes(PAGE) for _ in range(2 * MIB // PAGE)]
    disk_blocks[5] = bytes(PAGE)  # a zero block is never referenced
    disk = tmp_path / "disk"
    disk.write_bytes(b"".join(disk_blocks))
    ram = bytearray(4 * MIB)
    for i in range(40):  # one run: pages 100.. are blocks 200..
        ram[(100 + i) * PAGE : (101 + i) * PAGE] = disk_blocks[200 + i]
    for i in range(60):
        page, block = 300 + 3 * i, rng.randrange(300, 512)
        ram[page * PAGE : (page + 1) * PAGE] = disk_blocks[block]
    for i in range(20):
        ram[(700 + i) * PAGE : (701 + i) * PAGE] = rng.randbytes(PAGE)
    image = tmp_path / "ram"
    make_sparse(image, len(ram), {0: bytes(ram)})
    return image, disk, bytes(ram)


def test_pages_equal_to_disk_blocks_round_trip_byte_exact_and_are_stored_smaller(
    tmp_path: Path,
) -> None:
    image, disk, ram = make_inputs(tmp_path)
    residual = tmp_path / "residual"
    refs = split_image(image, disk, residual)
    assert refs.pages == 100
    assert refs.runs[0] == (100, 200, 40)  # consecutive pages of consecutive blocks: one run
    copied = b"".join(ram[p * PAGE : (p + 1) * PAGE] for first, _b, n in refs.runs
                      for p in range(first, first + n))  # fmt: skip
    assert refs.pages_sha256 == hashlib.sha256(copied).digest()
    assert residual.stat().st_size == len(ram)
    assert allocated(residual) < allocated(image) // 2  # only the 20 own pages' blocks stay
    blob = refs.encode()
    assert len(blob) == HEADER_SIZE + 24 * len(refs.runs)
    decoded = DiskRefs.decode(blob, image_size=len(ram), disk_size=2 * MIB, label="refs")
    assert decoded == refs
    apply_to(residual, decoded, disk)
    assert residual.read_bytes() == ram


def test_the_disk_may_sit_inside_a_bigger_file(tmp_path: Path) -> None:
    image, disk, ram = make_inputs(tmp_path)
    refs = split_image(image, disk, tmp_path / "residual")
    pack = tmp_path / "pack"
    pack.write_bytes(b"x" * 16384 + disk.read_bytes())
    apply_to(tmp_path / "residual", refs, pack, 16384)
    assert (tmp_path / "residual").read_bytes() == ram


def test_a_damaged_reference_is_refused_by_the_pages_digest(tmp_path: Path) -> None:
    image, disk, _ram = make_inputs(tmp_path)
    refs = split_image(image, disk, tmp_path / "residual")
    page, block, count = refs.runs[0]
    damaged = DiskRefs(refs.image_size, refs.pages_sha256,
                       ((page, block + 1, count), *refs.runs[1:]))  # fmt: skip
    wrong = r"^ram: the disk blocks its references name do not match their digest \(expected "
    with pytest.raises(EngineError, match=wrong):
        apply_to(tmp_path / "residual", damaged, disk)


def blob(*runs: tuple[int, int, int], major: int = 1, page: int = PAGE) -> bytes:
    import struct

    header = struct.pack("<8sHHIQQ32s", b"SMOLDREF", major, 0, page, 4 * MIB, len(runs),
                         bytes(32))  # fmt: skip
    return header + b"".join(struct.pack("<QQQ", *run) for run in runs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SMOLDREX" + bytes(56), "no SMOLDREF header"),
        (blob(major=2), r"disk-refs format 2\.0 is not supported \(this smolpack reads 1\.x\)"),
        (blob(page=16384), "page size 16384, expected 4096"),
        (blob((0, 0, 1))[:-1], "1 runs do not fit its 87 bytes"),
        (blob((0, 0, 0)), "run 0 is empty, out of order or past the image"),
        (blob((5, 0, 2), (6, 9, 1)), "run 1 is empty, out of order or past the image"),
        (blob((1023, 0, 2)), "run 0 is empty, out of order or past the image"),
        (blob((0, 511, 2)), r"run 0 refers to disk blocks 511\.\.512, the disk has 512"),
    ],
)
def test_bad_references_are_refused_before_anything_is_written(data: bytes, message: str) -> None:
    with pytest.raises(EngineError, match=rf"^refs: {message}$"):
        DiskRefs.decode(data, image_size=4 * MIB, disk_size=2 * MIB, label="refs")


def test_an_image_of_another_size_is_refused() -> None:
    with pytest.raises(EngineError, match=r"^refs: refers to a 4194304-byte image, the image "):
        DiskRefs.decode(blob(), image_size=8 * MIB, disk_size=2 * MIB, label="refs")
