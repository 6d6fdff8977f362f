"""Guest RAM pages that are copies of disk blocks, stored as references (formats/disk-refs.md).

A saved guest's page cache holds the file blocks its init steps read or wrote, and on a
4 KiB-block ext4 each such page is a block-aligned copy of a block of the pack's disk. The
create stage (`split_image`) zeroes those pages in the memory image and lists them as runs
(page, disk block, count); the run stage (`apply_refs`) copies the blocks back into the
image it materializes into the cache anyway, checking the copied bytes' SHA-256 (the rest
of the image is its section, digest-checked as every section is).
The pack then carries those bytes once, on the disk, instead of twice.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smolpack.errors import EngineError
from smolpack.payload._sparse import CHUNK, data_extents, pread_exact, write_nonzero

PAGE = 4096
MAGIC = b"SMOLDREF"
VERSION = (1, 0)
_HEADER = struct.Struct("<8sHHIQQ32s")  # magic, major, minor, page size, image size, runs,
# and the SHA-256 of the referenced pages' bytes in run order
_RUN = struct.Struct("<QQQ")  # first page of the image, first disk block, page count
HEADER_SIZE = _HEADER.size  # 64
_ZERO_PAGE = bytes(PAGE)


@dataclass(frozen=True, slots=True)
class DiskRefs:
    """Which pages of a memory image are which disk blocks (runs sorted by page)."""

    image_size: int  # bytes of the whole image
    pages_sha256: bytes  # of the referenced pages' bytes, in run order (= page order)
    runs: tuple[tuple[int, int, int], ...]  # (page, block, count)

    @property
    def pages(self) -> int:
        return sum(count for _page, _block, count in self.runs)

    def encode(self) -> bytes:
        header = _HEADER.pack(MAGIC, *VERSION, PAGE, self.image_size, len(self.runs),
                              self.pages_sha256)  # fmt: skip
        return header + b"".join(_RUN.pack(*run) for run in self.runs)

    @classmethod
    def decode(cls, data: bytes, *, image_size: int, disk_size: int, label: str) -> DiskRefs:
        """Check every field and run before anything is written (formats/disk-refs.md)."""
        if len(data) < HEADER_SIZE or data[:8] != MAGIC:
            raise EngineError(f"{label}: no SMOLDREF header")
        _magic, major, minor, page, size, count, sha = _HEADER.unpack_from(data)
        if major != VERSION[0]:
            raise EngineError(
                f"{label}: disk-refs format {major}.{minor} is not supported"
                f" (this smolpack reads {VERSION[0]}.x)"
            )
        if page != PAGE:
            raise EngineError(f"{label}: page size {page}, expected {PAGE}")
        if size != image_size:
            raise EngineError(f"{label}: refers to a {size}-byte image, the image has {image_size}")
        if len(data) != HEADER_SIZE + count * _RUN.size:
            raise EngineError(f"{label}: {count} runs do not fit its {len(data)} bytes")
        runs = tuple(_RUN.iter_unpack(data[HEADER_SIZE:]))
        end = 0
        for i, (first, block, n) in enumerate(runs):
            if n == 0 or first < end or (first + n) * PAGE > image_size:
                raise EngineError(f"{label}: run {i} is empty, out of order or past the image")
            if (block + n) * PAGE > disk_size:
                raise EngineError(
                    f"{label}: run {i} refers to disk blocks {block}..{block + n - 1},"
                    f" the disk has {disk_size // PAGE}"
                )
            end = first + n
        return cls(image_size=size, pages_sha256=sha, runs=runs)


def _blocks(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of each non-zero 4 KiB block of fd's data regions."""
    for start, length in data_extents(fd, 0, size):
        first = start - start % PAGE
        stop = min(size, -(-(start + length) // PAGE) * PAGE)
        pos = first
        while pos < stop:
            chunk = pread_exact(fd, min(CHUNK, stop - pos), pos)
            for off in range(0, len(chunk) - PAGE + 1, PAGE):
                block = chunk[off : off + PAGE]
                if block != _ZERO_PAGE:
                    yield (pos + off) // PAGE, block
            pos += len(chunk)


def split_image(image: Path, disk: Path, residual: Path) -> DiskRefs:
    """Write `image` less its pages equal to a block of `disk` to `residual` (sparse).

    Blocks are matched by a 64-bit hash and then compared byte for byte; among identical
    disk blocks the first is named, so the result depends on the inputs only.
    """
    index: dict[int, int] = {}
    if os.stat(image).st_size % PAGE:
        raise ValueError(f"{image}: not a whole number of {PAGE}-byte pages")
    dfd = os.open(disk, os.O_RDONLY)
    try:
        for number, data in _blocks(dfd, os.fstat(dfd).st_size):
            index.setdefault(hash(data), number)
        ifd = os.open(image, os.O_RDONLY)
        out = os.open(residual, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(ifd).st_size
            hasher = hashlib.sha256()
            pairs: list[tuple[int, int]] = []
            for page, data in _blocks(ifd, size):
                block = index.get(hash(data))
                if block is not None and pread_exact(dfd, PAGE, block * PAGE) == data:
                    pairs.append((page, block))
                    hasher.update(data)
                else:
                    write_nonzero(out, data, page * PAGE)
            os.ftruncate(out, size)
        finally:
            os.close(out)
            os.close(ifd)
    finally:
        os.close(dfd)
    return DiskRefs(image_size=size, pages_sha256=hasher.digest(), runs=_runs(pairs))


def split_in_place(image: Path, disk: Path, refs: Path) -> None:
    """`split_image` for a save step: `image` becomes its residual, `refs` its references."""
    residual = image.with_name(image.name + ".residual")
    refs.write_bytes(split_image(image, disk, residual).encode())
    residual.replace(image)


def _runs(pairs: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Merge (page, block) pairs, sorted by page, into runs where both go up by one."""
    runs: list[tuple[int, int, int]] = []
    for page, block in pairs:
        if runs:
            first, start, n = runs[-1]
            if page == first + n and block == start + n:
                runs[-1] = (first, start, n + 1)
                continue
        runs.append((page, block, 1))
    return tuple(runs)


def apply_refs(image_fd: int, refs: DiskRefs, disk_fd: int, disk_offset: int, label: str) -> None:
    """Copy the referenced disk blocks into the image, checking the bytes copied.

    `refs` is already decoded against both sizes; the disk is read at `disk_offset` (a raw
    disk section is read in place, inside the pack). The caller publishes the image only if
    this returns: a wrong block (a damaged reference, another disk) is an EngineError.
    """
    hasher = hashlib.sha256()
    for page, block, count in refs.runs:
        done = 0
        while done < count:
            n = min(count - done, CHUNK // PAGE)
            data = pread_exact(disk_fd, n * PAGE, disk_offset + (block + done) * PAGE)
            hasher.update(data)
            os.pwrite(image_fd, data, (page + done) * PAGE)
            done += n
    if hasher.digest() != refs.pages_sha256:
        raise EngineError(
            f"{label}: the disk blocks its references name do not match their digest"
            f" (expected {refs.pages_sha256.hex()[:12]}…, found {hasher.hexdigest()[:12]}…)"
        )
