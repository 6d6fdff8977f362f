"""Verify a pack's sections once per file version, then trust it (run stage).

Opening a payload checks only its header and index (cost independent of size), but QEMU
and libkrun then read the disk and the saved state straight from the file. So before the
first run of a given file we hash every section (`Payload.verify`: ~0.4 s per GiB of data
here, holes are free) and record that in the cache under a key of the index digest and the
file's identity: device, inode, size, mtime and ctime. Any write to the file changes its
ctime (which no user call can set back), so a flipped byte is caught at the next run, and
an unchanged file pays nothing after its first run.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from smolpack.cache import cached_file
from smolpack.errors import HostError, SectionDigestMismatch
from smolpack.payload import Payload, SectionKind


def file_key(payload: Payload) -> str:
    """Cache key for "this exact file, with this index, was verified".

    From the payload's open fd, the one the engines hand on (`Payload.fileno`): a stat of
    the path could describe another file than the one hashed and run."""
    st = os.fstat(payload.fileno())
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha256(payload.header.index_sha256 + ident.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """What `ensure_verified` found."""

    hashed: bool  # the sections were hashed now (first run of this file version)
    # saved states with a damaged section -> the one-line reason; a run boots cold instead
    damaged_states: dict[str, str] = field(default_factory=dict)


class _SparedStates(Exception):
    """Verification passed only by sparing damaged states: record no verified-mark."""

    def __init__(self, damaged: dict[str, str]) -> None:
        super().__init__()
        self.damaged = damaged


def ensure_verified(payload: Payload) -> Verified:
    """Hash every section unless this file version was verified before.

    Raises the reader's `SectionDigestMismatch` naming the damaged section, except when that
    section holds a saved state (kind `state`): a run does not need it, so the state is
    reported in `damaged_states` and the run boots cold (nothing else is spared: the kernel
    and disk are what a cold boot runs). A pack with a damaged state gets no verified-mark,
    so each run says so again. Without a writable cache the check still runs, every time.
    """
    hashed = False

    def verify(marker: object) -> None:
        nonlocal hashed
        damaged = verify_sparing_states(payload)
        hashed = True
        if damaged:
            raise _SparedStates(damaged)

    try:
        cached_file("verified", file_key(payload), verify)
    except _SparedStates as spared:
        return Verified(hashed=True, damaged_states=spared.damaged)
    except HostError:  # no writable cache: verify anyway, remember nothing
        return Verified(hashed=True, damaged_states=verify_sparing_states(payload))
    return Verified(hashed=hashed)


def verify_sparing_states(payload: Payload) -> dict[str, str]:
    """`payload.verify()`, but a damaged state section only rules its state out."""
    damaged: dict[str, str] = {}
    skip: set[str] = set()
    while True:
        try:
            payload.verify(skip=skip)
            return damaged
        except SectionDigestMismatch as err:
            entry = payload.sections.get(err.section)
            owners = [s for s in payload.manifest().states if err.section in s.sections]
            if entry is None or entry.kind != SectionKind.STATE or not owners:
                raise
            for state in owners:
                damaged[state.name] = err.message
                skip.update(state.sections)
