"""The per-run directory: overlay, console log, QEMU's stderr (run stage; design.md §6).

`private_run_dir` creates it under `$XDG_RUNTIME_DIR` (else the temp dir) and removes it on every
exit path the process survives: a normal exit, an error, Ctrl-C, SIGTERM. SIGKILL (or a
power cut) leaves it behind, so each run also sweeps the directories of runs that are gone.

A run holds an exclusive `flock` on `<dir>/.lock` for its whole life. The lock file
appears already locked (created as `.lock.new`, locked, renamed), so a sweeper that can
take the lock knows its owner is dead: the kernel drops a flock when the process dies,
however it dies, and flock needs no PID (which another PID namespace sharing /tmp would
not see). Kept (`--debug`) directories have no `.lock` and are never swept. Stdlib only:
the launcher imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "smolpack-run-"
LOCK = ".lock"


def run_base() -> Path:
    """Where run directories go: `$XDG_RUNTIME_DIR`, else the temp dir (`$TMPDIR`, /tmp)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) if base else Path(tempfile.gettempdir())


def sweep_stale(base: Path) -> list[Path]:
    """Remove the run directories in `base` whose run died without cleaning up."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in base.glob(f"{PREFIX}*"):
            try:
                fd = os.open(entry / LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # being created, kept by --debug, not ours, or gone
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live run
            try:
                # Removed while we hold the lock, so two sweepers never race on it.
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            finally:
                os.close(fd)
    return removed


@contextlib.contextmanager
def private_run_dir(*, keep: bool) -> Iterator[Path]:
    """A fresh private directory for one run, removed afterwards (unless `keep`)."""
    base = run_base()
    sweep_stale(base)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    fd = -1
    try:
        fd = os.open(path / f"{LOCK}.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(path / f"{LOCK}.new", path / LOCK)
        yield path
    finally:
        if keep:
            with contextlib.suppress(OSError):
                os.unlink(path / LOCK)
            print(f"smolpack: run files kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
