"""The per-run disk overlay, copied from a template cached per disk size (run stage).

Every run writes to a fresh, empty qcow2 overlay over the read-only base disk
(`qemu.create_overlay`). Making one runs `qemu-img create`: a process start, ~15 ms of the
"prepare" stage here (bench/bench_stages.py), at every run. An empty overlay holds nothing
but the virtual size (no backing file: `qemu_argv` links the base in), so the first run
makes it once into the cache, keyed by that size, and every run copies the few hundred
KiB. Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import hashlib
import shutil

from smolpack.cache import cached_file
from smolpack.engine.qemu import RootDisk, create_overlay
from smolpack.errors import HostError


def fresh_overlay(disk: RootDisk) -> None:
    """Create `disk.overlay`: an empty qcow2 of `disk.size` (copied from the cached one)."""
    key = hashlib.sha256(f"qcow2 overlay, no backing, {disk.size} bytes".encode()).hexdigest()
    try:
        template = cached_file("overlay", key, lambda tmp: create_overlay(tmp, disk))
    except HostError:  # no writable cache: make it here, as before
        create_overlay(disk.overlay, disk)
        return
    shutil.copyfile(template, disk.overlay)
    disk.overlay.chmod(0o600)  # the template is read-only; QEMU writes this one
