"""Write a `.smolmachine` payload, streaming every section.

Stage: create (the last step before embedding into stubs). Implements
formats/smolmachine.md, "Overall layout" and "Writer rules": header
placeholder, sections in the order added (raw ones 16 KiB-aligned, sparse
input stays sparse), index at the end, header patched last. The output goes
to a temporary file beside the target and is renamed only on success, so a
failed or interrupted write leaves nothing behind. No timestamps or host data
in the container: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from types import TracebackType

from smolpack.atomic_file import AtomicFile, default_mode
from smolpack.errors import BuildError
from smolpack.payload._sparse import CHUNK, ShortRead, copy_range, write_nonzero
from smolpack.payload.layout import (
    ENTRY_SIZE,
    HEADER_SIZE,
    INDEX_ALIGN,
    INDEX_HEADER_SIZE,
    RAW_ALIGN_LOG2,
    ZSTD_ALIGN_LOG2,
    Codec,
    Header,
    IndexHeader,
    SectionEntry,
    SectionKind,
    align_up,
    name_problem,
)

# zstd level 3 (the library default): ~1.8 GB/s on zeros, ~300 MB/s on
# typical disk data here. Single-threaded, so the output does not depend on
# the machine's core count.
ZSTD_LEVEL = 3
# Files (disk, RAM, kernel) get level 5 with long-distance matching over a 128 MiB window:
# a Debian disk stores 9 % smaller than at level 3 (files repeat far apart on a disk),
# for ~2x the compression time and the same decoding speed. 2**27 is the largest window
# a decoder accepts without being told to (zstd's default limit), so any reader decodes it.
ZSTD_FILE_LEVEL = 5
ZSTD_WINDOW_LOG = 27


class _HashingFdWriter:
    """File-like sink for the zstd compressor: pwrite at a running offset, hash."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.size = 0
        self.hasher = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        write_nonzero(self.fd, data, self.offset + self.size)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class PayloadWriter:
    """Build a payload at `path`: add sections, then `close()` (or use `with`).

    >>> with PayloadWriter("tool.smolmachine") as w:
    ...     w.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
    ...     w.add_file("disk", SectionKind.DISK, "base.ext4")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._out = AtomicFile(self.path)
        self._fd = self._out.fd
        self._entries: list[SectionEntry] = []
        self._cursor = HEADER_SIZE
        self._done = False

    def __enter__(self) -> PayloadWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def entries(self) -> list[SectionEntry]:
        return list(self._entries)

    def _start(self, name: str, codec: Codec) -> tuple[int, int]:
        if self._done:
            raise ValueError("PayloadWriter is closed")
        problem = name_problem(name)
        if problem:
            raise ValueError(f"section name {name!r} {problem}")
        if any(e.name == name for e in self._entries):
            raise ValueError(f"section name {name!r} is used twice")
        align_log2 = RAW_ALIGN_LOG2 if codec == Codec.NONE else ZSTD_ALIGN_LOG2
        return align_up(self._cursor, 1 << align_log2), align_log2

    def _finish(self, entry: SectionEntry) -> SectionEntry:
        self._entries.append(entry)
        self._cursor = entry.offset + entry.stored_size
        return entry

    def add_bytes(
        self, name: str, kind: SectionKind | int, data: bytes, *, codec: Codec = Codec.NONE
    ) -> SectionEntry:
        """Add a section held in memory (manifest, small blobs)."""
        offset, align_log2 = self._start(name, codec)
        stored = data
        if codec == Codec.ZSTD:
            import zstandard

            stored = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        write_nonzero(self._fd, stored, offset)
        return self._finish(
            SectionEntry(
                name=name,
                kind=int(kind),
                codec=int(codec),
                align_log2=align_log2,
                offset=offset,
                stored_size=len(stored),
                raw_size=len(data),
                sha256=hashlib.sha256(stored).digest(),
            )
        )

    def add_file(
        self,
        name: str,
        kind: SectionKind | int,
        src_path: str | os.PathLike[str],
        *,
        codec: Codec = Codec.NONE,
    ) -> SectionEntry:
        """Stream a file into a section; memory use is flat (1 MiB buffers).

        codec none copies data regions only (SEEK_DATA/SEEK_HOLE), so holes
        in `src_path` stay holes in the payload; zstd reads holes as zeros.
        """
        offset, align_log2 = self._start(name, codec)
        src = os.open(src_path, os.O_RDONLY)
        try:
            raw_size = os.fstat(src).st_size
            try:
                if codec == Codec.NONE:
                    hasher = hashlib.sha256()
                    copy_range(src, 0, raw_size, self._fd, offset, hasher)
                    stored_size = raw_size
                else:
                    stored_size, hasher = self._compress_file(src, raw_size, offset)
            except ShortRead as err:
                raise BuildError(
                    f"{os.fspath(src_path)}: file shrank to {err.offset} bytes while being "
                    f"packed into section '{name}'"
                ) from None
        finally:
            os.close(src)
        return self._finish(
            SectionEntry(
                name=name,
                kind=int(kind),
                codec=int(codec),
                align_log2=align_log2,
                offset=offset,
                stored_size=stored_size,
                raw_size=raw_size,
                sha256=hasher.digest(),
            )
        )

    def _compress_file(self, src: int, raw_size: int, offset: int) -> tuple[int, hashlib._Hash]:
        import zstandard

        sink = _HashingFdWriter(self._fd, offset)
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_FILE_LEVEL, source_size=raw_size, enable_ldm=True,
            window_log=min(ZSTD_WINDOW_LOG, max(10, raw_size.bit_length())),
        )  # fmt: skip
        cctx = zstandard.ZstdCompressor(compression_params=params)
        # size= puts the content size in the frame header, as one-shot compress does.
        with cctx.stream_writer(sink, size=raw_size, closefd=False) as zw:  # type: ignore[arg-type]
            pos = 0
            while pos < raw_size:
                chunk = os.pread(src, min(CHUNK, raw_size - pos), pos)
                if not chunk:
                    raise ShortRead(pos)
                zw.write(chunk)
                pos += len(chunk)
        return sink.size, sink.hasher

    def close(self) -> None:
        """Write the index, patch the header, fsync and rename into place."""
        if self._done:
            return
        try:
            index_offset = align_up(self._cursor, INDEX_ALIGN)
            index = IndexHeader(entry_count=len(self._entries)).pack() + b"".join(
                e.pack() for e in self._entries
            )
            assert len(index) == INDEX_HEADER_SIZE + ENTRY_SIZE * len(self._entries)
            header = Header(
                payload_size=index_offset + len(index),
                index_offset=index_offset,
                index_size=len(index),
                index_sha256=hashlib.sha256(index).digest(),
            )
            os.pwrite(self._fd, index, index_offset)
            os.pwrite(self._fd, header.pack(), 0)
            # Trailing holes of the last section are covered by the index, but
            # the file length must be exact for an embedded copy to match.
            self._out.commit(size=header.payload_size, mode=default_mode())
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._done = True
        self._out.abort()
