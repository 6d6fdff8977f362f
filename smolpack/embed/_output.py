"""Write the packed executable atomically and stream byte ranges into it.

Stage: create, the embedding step (payload → stub). Implements the writer
side of formats/smolmachine.md, "Embedding in executables": the output is
built in a temporary file beside the target and renamed over it only when
complete, so a failure or Ctrl-C at any point leaves no half-written file
behind (neither the target nor the temporary).

Copies run in the kernel (`os.copy_file_range`, no user-space buffer; on a
reflink-capable filesystem no data is copied at all) and only over the data
regions of the source (SEEK_DATA/SEEK_HOLE), so a multi-GiB sparse payload
costs its data, not its size, and the embedder's memory stays flat (~30 MiB
RSS for a 2 GiB payload, see bench/bench_embed.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smolpack.atomic_file import AtomicFile
from smolpack.errors import HostError, UsageError
from smolpack.payload._sparse import data_extents
from smolpack.payload.locate import locate

# Progress callback: (bytes copied so far, bytes to copy in total).
ProgressFn = Callable[[int, int], None]

# Mode of the packed executable: it is a program, and the payload in it is
# not secret (anyone who can run the tool can read it).
OUTPUT_MODE = 0o755
# One copy_file_range call moves at most this much, so progress and Ctrl-C
# are seen at least every 64 MiB (~30 ms of copying here).
_STEP = 64 * 1024 * 1024
_FALLBACK_CHUNK = 1024 * 1024
# Errors after which copy_file_range will not work for this pair of files
# (another filesystem, old kernel, FUSE, macOS): fall back to pread/pwrite.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def _describe(err: OSError) -> str:
    return err.strerror or str(err)


class AtomicOutput(AtomicFile):
    """The packed executable under construction: an `AtomicFile` with create's errors."""

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError(f"{path}: is a directory; give the path of the executable to write")
        try:
            super().__init__(path)
        except FileNotFoundError:
            raise UsageError(
                f"{path}: cannot write: directory {directory} does not exist"
            ) from None
        except OSError as err:
            raise UsageError(f"{path}: cannot write into {directory}: {_describe(err)}") from None

    def commit(self, *, size: int, mode: int, durable: bool = True) -> None:
        """`AtomicFile.commit`, failures as one HostError line."""
        try:
            super().commit(size=size, mode=mode, durable=durable)
        except OSError as err:
            raise HostError(f"{self.path}: writing failed: {_describe(err)}") from None


class Copier:
    """Copy ranges from source files into one output, counting bytes for progress."""

    def __init__(self, dst_fd: int, total: int, progress: ProgressFn | None) -> None:
        self.dst_fd = dst_fd
        self.total = total
        self.done = 0
        self.progress = progress
        self._kernel_copy = hasattr(os, "copy_file_range")

    def copy(self, src_fd: int, src_off: int, length: int, dst_off: int) -> None:
        """Copy src[src_off:src_off+length] to dst[dst_off:], skipping holes.

        Holes in the source are not written, so they read back as zeros
        once the output has its final length (AtomicOutput.commit).
        """
        end = src_off + length
        if os.fstat(src_fd).st_size < end:  # it shrank since it was checked
            raise ShortSource(os.fstat(src_fd).st_size)
        pos = src_off
        for data_off, data_len in data_extents(src_fd, src_off, end):
            self._advance(data_off - pos)  # a hole: nothing to copy
            self._copy_data(src_fd, data_off, data_len, dst_off + (data_off - src_off))
            pos = data_off + data_len
        self._advance(end - pos)

    def _copy_data(self, src_fd: int, src_off: int, length: int, dst_off: int) -> None:
        while length > 0:
            step = min(length, _STEP)
            moved = self._copy_step(src_fd, src_off, step, dst_off)
            if moved == 0:
                raise ShortSource(src_off)
            src_off += moved
            dst_off += moved
            length -= moved
            self._advance(moved)

    def _copy_step(self, src_fd: int, src_off: int, length: int, dst_off: int) -> int:
        if self._kernel_copy:
            try:
                return os.copy_file_range(src_fd, self.dst_fd, length, src_off, dst_off)
            except OSError as err:
                if err.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False
        done = 0
        while done < length:
            chunk = os.pread(src_fd, min(_FALLBACK_CHUNK, length - done), src_off + done)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                written = os.pwrite(self.dst_fd, view, dst_off + done)
                view = view[written:]
                done += written
        return done

    def _advance(self, moved: int) -> None:
        self.done += moved
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


class ShortSource(Exception):
    """A source file ended before the range being copied (it shrank)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"unexpected end of file at offset {offset}")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Move:
    """Copy `size` bytes of the stub at `src` to `dst` in the output."""

    src: int
    size: int
    dst: int


def write_executable(
    out: str,
    *,
    stub_fd: int,
    stub_label: str,
    payload_path: str,
    payload_size: int,
    payload_offset: int,
    moves: Sequence[Move],
    patches: Sequence[tuple[int, bytes]],
    size: int,
    progress: ProgressFn | None,
) -> None:
    """Write `out` atomically: stub ranges, the payload, then header patches.

    Patches (offset, bytes) are written last, over whatever the moves put
    there. Before the rename, the payload is located in the new file with
    the launcher's own reader: writer and reader must agree.
    """
    total = payload_size + sum(m.size for m in moves)
    with AtomicOutput(out) as dst:
        copier = Copier(dst.fd, total, progress)
        try:
            payload_fd = os.open(payload_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for move in moves:
                    copier.copy(stub_fd, move.src, move.size, move.dst)
                copier.copy(payload_fd, 0, payload_size, payload_offset)
            finally:
                os.close(payload_fd)
            for offset, data in patches:
                dst.pwrite(data, offset)
            os.ftruncate(dst.fd, size)
            found = locate(dst.fd, out).origin
        except ShortSource as err:
            raise UsageError(
                f"{stub_label} or {payload_path} shrank while being copied ({err})"
            ) from None
        except OSError as err:
            raise HostError(f"{out}: writing failed: {_describe(err)}") from None
        if found != payload_offset:
            raise AssertionError(f"payload written at {payload_offset} but found at {found}")
        dst.commit(size=size, mode=OUTPUT_MODE)
