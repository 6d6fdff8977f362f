"""Start a pack's VM with QEMU: the kernel and disk from the payload, then `QemuVm` (run stage).

The disk is used in place when stored raw (the verified fd itself), or decoded once into the
cache; every run writes a fresh qcow2 overlay over it. A restore hands QEMU the migration
stream as an fd on the section's start, and guest RAM as its own section when the state has
one (lazy memory, formats/qemu-state.md).
Stdlib only (the launcher imports this lazily, only when it picked QEMU).
"""

from __future__ import annotations

import os
from pathlib import Path

from smolpack.cache import cached_section, section_file
from smolpack.engine.qemu import QemuMachine, QemuVm, RootDisk, create_overlay
from smolpack.engine.qemu_state import parse_state, run_ram
from smolpack.engine.select import EnginePlan
from smolpack.errors import EngineError
from smolpack.machine import MachineConfig
from smolpack.payload import Payload
from smolpack.payload.layout import Codec
from smolpack.stages import StageClock


def start_qemu_vm(
    plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path, clock: StageClock
) -> QemuVm:
    """Boot or restore the pack's VM under QEMU; the agent answers on `vm.agent`."""
    qemu_machine = QemuMachine(
        guest_arch=payload.manifest().guest_arch,
        cpus=machine.cpus,
        memory_mib=machine.memory_mib,
        kernel=cached_section(payload, "kernel", "kernel"),
        cmdline=machine.kernel_cmdline,
        net=machine.net,
    )
    # In place in the pack, or decoded once into the cache when stored compressed.
    disk_path, disk_offset, disk_size = section_file(payload, "disk", "disk")
    in_place = payload.sections["disk"].codec == Codec.NONE
    # A fresh overlay per run: the shipped base disk is never written.
    disk = RootDisk(
        path=disk_path,
        # In place: the very file ensure_verified hashed, not whatever the path is now.
        fd=payload.fileno() if in_place else None,
        offset=disk_offset,
        size=disk_size,
        overlay=run_dir / "overlay.qcow2",
    )
    create_overlay(disk.overlay, disk)  # written in Python (engine/qcow2.py): ~2 ms
    qemu, accel = str(plan.qemu), plan.accel or "tcg"
    if plan.state is None:
        clock.mark("prepare")
        vm = QemuVm(qemu_machine, disk, run_dir=run_dir, binary=qemu, accel=accel)
        clock.mark("spawn")  # the boot itself ends in the handshake
        return vm
    state = parse_state(plan.state)
    ram = run_ram(payload, state, machine.memory_mib, disk)  # None: RAM in the stream (eager)
    stream, offset, _size = section_file(payload, state.migration, "qemu-stream")
    clock.mark("prepare")
    # QEMU reads the migration stream from this fd, from the section's start: in place, a
    # reopen of the verified file; decoded, the cache entry (digest-checked when made).
    if payload.sections[state.migration].codec == Codec.NONE:
        fd = _reopen_verified(payload)
    else:
        fd = os.open(stream, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        vm = QemuVm(
            qemu_machine, disk, run_dir=run_dir, binary=qemu, accel=accel, incoming_fd=fd, ram=ram
        )
    finally:
        os.close(fd)
    clock.mark("spawn")
    try:
        vm.wait_incoming()
        clock.mark("load")
    except BaseException:
        vm.close()
        raise
    return vm


def _reopen_verified(payload: Payload) -> int:
    """A new fd on the very file `payload` verified, with a file offset of its own.

    Not a dup: QEMU reads the migration stream from the fd's offset, and its disk driver
    seeks the (shared) offset of the fd it was given. Linux reopens the open file itself;
    elsewhere the path is reopened and must still name the same file.
    """
    verified = os.fstat(payload.fileno())
    try:
        fd = os.open(f"/proc/self/fd/{payload.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = os.open(payload.path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (verified.st_dev, verified.st_ino):
        os.close(fd)
        raise EngineError(f"{payload.path} was replaced by another file while it started")
    return fd
