"""Create stage, registry: progress of blob transfers on stderr.

On a terminal one line per blob is rewritten in place with bytes done against
the total (at most ~10 updates a second, so a fast local pull does not spend its
time printing); elsewhere (CI logs, pipes) exactly one line per blob is printed
when it is complete.
"""

from __future__ import annotations

import sys
import time

from smolpack.progress import Progress

_MIN_INTERVAL_S = 0.1


def _mib(n: int) -> str:
    if n < 1 << 10:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


class BlobProgress:
    """One blob's line: `update(done)` while it moves, `finish()` once it is there."""

    def __init__(self, progress: Progress, label: str, total: int | None) -> None:
        self._quiet = progress.quiet
        self._tty = not progress.quiet and sys.stderr.isatty()
        self._label = label
        self._total = total
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int) -> None:
        if not self._tty:
            return
        now = time.monotonic()
        if now - self._last < _MIN_INTERVAL_S:
            return
        self._last = now
        total = f" / {_mib(self._total)}" if self._total else ""
        sys.stderr.write(f"\r\x1b[2K    {self._label}  {_mib(done)}{total}")
        sys.stderr.flush()

    def finish(self, size: int, *, cached: bool) -> None:
        if self._quiet:
            return
        how = "cached" if cached else f"pulled in {time.monotonic() - self._start:.1f} s"
        prefix = "\r\x1b[2K" if self._tty else ""
        sys.stderr.write(f"{prefix}    {self._label}  {_mib(size)}  {how}\n")
        sys.stderr.flush()
