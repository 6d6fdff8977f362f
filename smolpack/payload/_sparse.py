"""Sparse-aware streaming of byte ranges between files, hashing as it goes.

Stage: payload (used by the writer to store sections and by the reader to
extract them). Implements formats/smolmachine.md, "Sparse sections": holes are
hashed as zeros and are never written, so a multi-GiB disk of which a few MiB
are data costs a few MiB of I/O plus one SHA-256 pass (~1.7 GB/s here).
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator

# 1 MiB reads keep memory flat and syscalls few; zero detection works on
# 64 KiB blocks so a mostly-empty chunk still leaves holes behind.
CHUNK = 1 << 20
ZERO_BLOCK = 64 * 1024
_ZEROS = bytes(CHUNK)


class ShortRead(Exception):
    """The source ended before the range did (it shrank, or was truncated)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"unexpected end of file at offset {offset}")
        self.offset = offset


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of the data regions of fd within [start, end).

    Uses SEEK_DATA/SEEK_HOLE; where the filesystem cannot answer, the whole
    range counts as data (correct, just not sparse).
    """
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            yield pos, end - pos
            return
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        hole = min(hole, end)
        yield data, hole - data
        pos = hole


def hash_zeros(hasher: hashlib._Hash, length: int) -> None:
    while length > 0:
        n = min(length, CHUNK)
        hasher.update(_ZEROS[:n] if n < CHUNK else _ZEROS)
        length -= n


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Read exactly `length` bytes at `offset` or raise ShortRead."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise ShortRead(offset + len(data))
        data += more
    return data


def write_nonzero(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite `data` at `offset`, skipping all-zero 64 KiB blocks (left as holes).

    The caller must make the file long enough afterwards (ftruncate) so a
    trailing skipped block still reads back as zeros.
    """
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        block = view[pos : pos + ZERO_BLOCK]
        if block != _ZEROS[: len(block)]:
            written = os.pwrite(fd, block, offset + pos)
            while written < len(block):
                written += os.pwrite(fd, block[written:], offset + pos + written)
        pos += len(block)


def copy_range(
    src_fd: int,
    src_start: int,
    length: int,
    dst_fd: int | None,
    dst_start: int,
    hasher: hashlib._Hash,
) -> None:
    """Hash src[src_start:src_start+length] and write it to dst at dst_start.

    Data regions are read in 1 MiB chunks; holes are hashed as zeros and not
    written (nor are all-zero blocks), so sparse stays sparse. dst_fd None
    only hashes (verify). Raises ShortRead if the source is shorter.
    """
    end = src_start + length
    if os.fstat(src_fd).st_size < end:
        raise ShortRead(os.fstat(src_fd).st_size)
    pos = src_start
    for data_off, data_len in data_extents(src_fd, src_start, end):
        hash_zeros(hasher, data_off - pos)
        off = data_off
        stop = data_off + data_len
        while off < stop:
            chunk = os.pread(src_fd, min(CHUNK, stop - off), off)
            if not chunk:
                raise ShortRead(off)
            hasher.update(chunk)
            if dst_fd is not None:
                write_nonzero(dst_fd, chunk, dst_start + off - src_start)
            off += len(chunk)
        pos = stop
    hash_zeros(hasher, end - pos)
