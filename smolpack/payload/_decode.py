"""Decode a compressed section while hashing its stored bytes.

Stage: run and verify. Implements formats/smolmachine.md, "Codecs": the
SHA-256 covers the stored (compressed) bytes; decoding must produce exactly
raw_size bytes from exactly stored_size bytes, one zstd frame. Output is
bounded by raw_size as it is produced, so a hostile frame that expands
without limit is cut off after raw_size + 1 MiB, not after it fills memory.
`zstandard` is imported here, lazily, so opening a payload never pays for it.
"""

from __future__ import annotations

import hashlib
import io
import os

from smolpack.errors import BadLayout, SectionDigestMismatch, UnsupportedVersion
from smolpack.payload._sparse import CHUNK, write_nonzero
from smolpack.payload.layout import Codec, SectionEntry


def check_readable(label: str, entry: SectionEntry) -> None:
    """Refuse sections this reader cannot decode (unknown codec or entry flags)."""
    if entry.codec not in (Codec.NONE, Codec.ZSTD):
        raise UnsupportedVersion(
            f"{label}: section '{entry.name}' uses codec {entry.codec}; this smolpack "
            "knows 0 (none) and 1 (zstd)"
        )
    if entry.flags:
        raise UnsupportedVersion(
            f"{label}: section '{entry.name}' has flags 0x{entry.flags:08x}; this smolpack "
            "knows none"
        )


class MemorySink:
    def __init__(self) -> None:
        self._buf = io.BytesIO()

    def write(self, data: bytes, offset: int) -> None:
        self._buf.write(data)

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


class FileSink:
    """Writes at explicit offsets, leaving all-zero blocks as holes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes, offset: int) -> None:
        write_nonzero(self._fd, data, offset)


class _HashingRange(io.RawIOBase):
    """A read-only stream over [start, start+length) of fd that hashes what it yields."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = start
        self._end = start + length
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._end - self._pos, CHUNK)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        if not data:
            return 0
        buffer[: len(data)] = data
        self.hasher.update(data)
        self._pos += len(data)
        return len(data)

    def drain(self) -> int:
        """Hash the rest of the range; return how many bytes were left."""
        left = 0
        while chunk := self.read(CHUNK):
            left += len(chunk)
        return left


def decode_section(
    fd: int, origin: int, label: str, entry: SectionEntry, sink: MemorySink | FileSink
) -> None:
    """Decode a zstd section into `sink`, checking digest then shape."""
    import zstandard  # lazy: ~10 ms, and only packs with zstd sections need it

    src = _HashingRange(fd, origin + entry.offset, entry.stored_size)
    produced = 0
    problem = None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            src,  # type: ignore[arg-type]
            read_size=CHUNK,
            read_across_frames=False,
            closefd=False,
        )
        while chunk := reader.read(CHUNK):
            sink.write(chunk, produced)
            produced += len(chunk)
            if produced > entry.raw_size:
                problem = f"decodes to more than raw_size {entry.raw_size} bytes"
                break
    except zstandard.ZstdError as err:
        problem = f"zstd data is corrupt ({err})"
    trailing = src.drain()
    # The digest is checked first: a damaged section is reported as damage,
    # whatever the decoder made of it.
    found = src.hasher.digest()
    if found != entry.sha256:
        raise SectionDigestMismatch(
            f"{label}: section '{entry.name}' digest mismatch "
            f"(expected {entry.sha256.hex()[:12]}…, found {found.hex()[:12]}…)"
        )
    if problem is None and produced != entry.raw_size:
        problem = f"decodes to {produced} bytes, raw_size is {entry.raw_size}"
    if problem is None and trailing:
        problem = f"has {trailing} bytes after its zstd frame"
    if problem is not None:
        raise BadLayout(f"{label}: section '{entry.name}' {problem}")
