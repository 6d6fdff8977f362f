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

from smolpack.cache import cached_file
from smolpack.errors import HostError
from smolpack.payload import Payload


def file_key(payload: Payload) -> str:
    """Cache key for "this exact file, with this index, was verified".

    From the payload's open fd, the one the engines hand on (`Payload.fileno`): a stat of
    the path could describe another file than the one hashed and run."""
    st = os.fstat(payload.fileno())
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha256(payload.header.index_sha256 + ident.encode()).hexdigest()


def ensure_verified(payload: Payload) -> bool:
    """Hash every section unless this file version was verified before; True if hashed now.

    Raises the reader's `SectionDigestMismatch` naming the damaged section. Without a
    writable cache the check still runs, every time.
    """
    hashed = False

    def verify(marker: object) -> None:
        nonlocal hashed
        payload.verify()
        hashed = True

    try:
        cached_file("verified", file_key(payload), verify)
    except HostError:  # no writable cache: verify anyway, remember nothing
        payload.verify()
        return True
    return hashed
