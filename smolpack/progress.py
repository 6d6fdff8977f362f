"""Progress lines on stderr for long steps (create and `smolpack run`).

`==> Booting the build VM` when a step starts, with its duration once done, so
a user always sees what is going on; `quiet=True` silences everything but errors.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class Progress:
    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self._t0 = time.monotonic()

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"    {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        start = time.monotonic()
        if not self.quiet:
            print(f"==> {message}", file=sys.stderr, flush=True)
        yield
        if not self.quiet:
            took = time.monotonic() - start
            print(f"    done in {took:.1f} s", file=sys.stderr, flush=True)
