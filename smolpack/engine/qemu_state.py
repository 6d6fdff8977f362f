"""The QEMU engine's saved state inside a pack (create and run stages; formats/qemu-state.md).

A QEMU state is one or two sections, named `<state>/<part>`:

- `migration`: QEMU's migration stream (`migrate` to a file, loaded with `-incoming`);
- `memory` (lazy layout): guest RAM as a raw file of exactly the machine's RAM size. The
  stream then holds device state only (x-ignore-shared), and a run maps this file
  copy-on-write instead of loading RAM from the stream: restore time stays flat in the
  size of the saved RAM. Without it (eager layout, packs before issue 14) the stream
  carries the RAM and QEMU reads all of it before the guest runs;
- `memory-refs` (lazy layout with references, spec 1.2): the pages of `memory` that are
  copies of disk blocks are zero there and listed here (formats/disk-refs.md); the cached
  RAM file is filled from the disk once, when it is materialized.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from smolpack.cache import cached_file, cached_section
from smolpack.engine.disk_refs import DiskRefs, apply_refs
from smolpack.engine.qemu import RamFile, RootDisk
from smolpack.errors import EngineError
from smolpack.payload import Payload
from smolpack.payload.manifest import StateRef

MIGRATION = "migration"
MEMORY = "memory"
MEMORY_REFS = "memory-refs"
# QEMU 7.2 opens mem-path O_RDWR even for a private mapping (the `rom` property that allows
# O_RDONLY came in 8.2), so the owner may write the cached RAM file; QEMU never does.
MEMORY_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuState:
    """The sections of one QEMU state."""

    migration: str  # section holding the migration stream
    memory: str | None  # section holding the RAM file; None: RAM is inside the stream
    memory_refs: str | None = None  # its pages that are disk blocks (formats/disk-refs.md)


def state_sections(name: str, *, lazy: bool, refs: bool = False) -> tuple[str, ...]:
    """Section names of a QEMU state called `name`, in manifest order."""
    if not lazy:
        return (f"{name}/{MIGRATION}",)
    return (f"{name}/{MIGRATION}", f"{name}/{MEMORY}", *([f"{name}/{MEMORY_REFS}"] * refs))


def parse_state(state: StateRef) -> QemuState:
    """The parts of `state`; EngineError when its sections are not one of the three layouts."""
    sections = tuple(state.sections)
    for lazy, refs in ((False, False), (True, False), (True, True)):
        if sections == state_sections(state.name, lazy=lazy, refs=refs):
            return QemuState(migration=sections[0], memory=sections[1] if lazy else None,
                             memory_refs=sections[2] if refs else None)  # fmt: skip
    raise EngineError(
        f"QEMU state {state.name} must have sections {state.name}/{MIGRATION}"
        f" [+ {state.name}/{MEMORY} [+ {state.name}/{MEMORY_REFS}]],"
        f" found {', '.join(sections) or 'none'}"
    )


def run_ram(
    payload: Payload, state: QemuState, memory_mib: int, disk: RootDisk | None = None
) -> RamFile | None:
    """The RAM file a run maps copy-on-write (materialized once per digest); None if eager.

    With `memory-refs`, `disk` (the run's base disk: the pack's `disk` section) fills the
    referenced pages while the file is materialized.
    """
    if state.memory is None:
        return None
    raw_size = payload.sections[state.memory].raw_size
    if raw_size != memory_mib << 20:
        raise EngineError(
            f"section {state.memory} holds {raw_size} bytes of RAM,"
            f" the machine has {memory_mib} MiB"
        )
    if state.memory_refs is None:
        path = cached_section(payload, state.memory, "qemu-memory", mode=MEMORY_MODE)
        return RamFile(path=Path(path), shared=False)
    if disk is None:
        raise ValueError("a state with memory-refs needs the run's disk")
    refs_name, memory = state.memory_refs, state.memory
    # Keyed by everything the file is made of: the same RAM next to another disk differs.
    key = hashlib.sha256(b"disk-refs 1\0")
    for name in (memory, refs_name, "disk"):
        key.update(payload.sections[name].sha256)

    def produce(tmp: Path) -> None:
        refs = DiskRefs.decode(payload.read_section(refs_name), image_size=raw_size,
                               disk_size=disk.size, label=f"section {refs_name}")  # fmt: skip
        payload.copy_section_to(memory, tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
        disk_fd = disk.fd if disk.fd is not None else os.open(disk.path, os.O_RDONLY)
        try:
            apply_refs(fd, refs, disk_fd, disk.offset, f"section {memory}")
        finally:
            os.close(fd)
            if disk_fd != disk.fd:
                os.close(disk_fd)

    path = cached_file("qemu-memory", key.hexdigest(), produce, mode=MEMORY_MODE)
    return RamFile(path=path.resolve(), shared=False)
