"""Whether this host's QEMU may load a saved QEMU state (run stage; create records the facts).

QEMU only promises that a migration stream loads into the same QEMU version and machine
type that wrote it (`microvm` is not a versioned machine type), and `-cpu max` under TCG is
whatever that version emulates. Patch releases of one stable series (7.2.x) count as the same
version; a stream that still fails to load falls back to a cold boot at run time. So create
records `qemu_version`, `machine` and `cpu` with the state (formats/smolmachine.md, "Manifest
section"), and a run compares them with its own QEMU before restoring: any difference means a
cold boot, with one line saying why.

Asking QEMU its version costs 70-150 ms (a process start), so it is cached by the binary's
identity (path, inode, size, mtime, ctime): a run pays one stat and one small read.
Stdlib only: the launcher imports this module.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from smolpack.cache import cached_file
from smolpack.engine.qemu import CPU_MODEL, MACHINE
from smolpack.errors import HostError
from smolpack.host import qemu_version
from smolpack.payload.manifest import StateRef

_LABELS = {"qemu_version": "QEMU", "machine": "machine", "cpu": "CPU model"}


def qemu_facts(qemu: Path) -> dict[str, str]:
    """What a state saved (or restored) by this QEMU binary depends on."""
    return {"qemu_version": cached_qemu_version(qemu), "machine": MACHINE, "cpu": CPU_MODEL}


def cached_qemu_version(qemu: Path) -> str:
    real = os.path.realpath(qemu)
    st = os.stat(real)
    ident = f"{real}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()
    try:
        entry = cached_file(
            "qemu-version", key, lambda tmp: tmp.write_text(qemu_version(Path(real)))
        )
        return entry.read_text()
    except HostError:  # no writable cache (or QEMU does not run): ask it directly
        return qemu_version(Path(real))


def restore_blocker(state: StateRef, qemu: Path) -> str | None:
    """Why `qemu` must not load `state` (one clause), or None when it may try.

    A state without recorded facts (packs made before they were recorded) is tried; if
    QEMU refuses it, the run falls back to a cold boot all the same.
    """
    if not state.recorded:
        return None
    here = qemu_facts(qemu)
    for key, label in _LABELS.items():
        saved = state.recorded.get(key)
        if saved is None:
            continue
        same = _series(saved) == _series(here[key]) if key == "qemu_version" else saved == here[key]
        if not same:
            return f"it was saved by {label} {saved}, this host has {here[key]}"
    return None


def _series(version: str) -> tuple[str, ...]:
    """7.2.22 -> (7, 2): a stable series keeps its migration format, and distributions
    ship security updates as new patch releases (Debian 12: 7.2.x), which must not turn
    every packed tool into a cold boot."""
    return tuple(version.split(".")[:2])
