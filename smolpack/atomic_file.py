"""A file that appears complete or not at all: built beside its target, renamed on commit.

Used by every stage that writes a user-visible or cached file from a stream: the payload
writer (create), the embedder (create) and section extraction (run). A failure or Ctrl-C
at any point leaves neither the target nor the temporary behind.

Stdlib only, and no `tempfile` (its imports cost the launcher stub start time).
"""

from __future__ import annotations

import os
from types import TracebackType


def default_mode() -> int:
    """0o666 minus the process umask: what `open(path, "w")` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A hidden temporary file beside `path` (same filesystem, so the rename is atomic).

    Use as a context manager: leaving the block without `commit()` -- any exception,
    KeyboardInterrupt included -- removes the temporary file. Errors are plain `OSError`;
    callers turn them into their stage's one-line error.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        self.tmp = os.path.join(
            directory, f".{os.path.basename(self.path)}.tmp-{os.urandom(4).hex()}"
        )
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._done = False

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def commit(self, *, size: int, mode: int, durable: bool = True) -> None:
        """Set the final length and mode, fsync (if `durable`) and rename over `path`."""
        if self._done:
            raise ValueError(f"{self.path}: already committed or aborted")
        try:
            # Trailing holes (zero padding) exist only once the length is set.
            os.ftruncate(self.fd, size)
            if durable:
                os.fsync(self.fd)
            os.fchmod(self.fd, mode)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Remove the temporary file (no-op after `commit`)."""
        if self._done:
            return
        self._done = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
