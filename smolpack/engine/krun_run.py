"""Start a pack's VM with libkrun: files from the payload, then `KrunVm` (run stage).

What must be a file, and why (formats/krun-state.md, "Files at run time"):

- the base disk: `krun_create_disk_overlay` writes an absolute *path* into the overlay, and
  neither it nor `krun_add_disk2/3` takes an offset, so the `disk` section cannot be used in
  place as QEMU does. It is materialized once into the cache, by digest (sparse: ~the data
  it holds), and every run puts a fresh overlay over it.
- guest memory: `krun_set_snapshot_memory_fd2` maps the fd from offset 0 and checks its
  length against manifest.bin, so a section inside our file (at a 16 KiB-aligned offset,
  followed by other sections) cannot be handed over. It is materialized once into the cache
  by digest, then each run opens it read-only and libkrun maps it MAP_PRIVATE: pages fault
  in lazily, writes stay private to the run.
- checkpoint.bin, manifest.bin: decoded (zstd, a few KiB) into the run directory.

Stdlib only.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from smolpack.cache import cached_file, cached_section
from smolpack.engine.disk_refs import DiskRefs, apply_refs
from smolpack.engine.krun import KrunSpec, KrunVm, require_hypervisor
from smolpack.engine.krun_state import (
    FILES,
    MemoryMap,
    StateSections,
    decode_cpu,
    read_memory_layout,
    restore_blocker,
    unpack_memory,
)
from smolpack.engine.select import EnginePlan
from smolpack.host import cpu_id
from smolpack.machine import MachineConfig
from smolpack.payload import Payload, StateRef
from smolpack.runtime_libs import RuntimeLibs


def start_krun_vm(
    plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path, *,
    libs: RuntimeLibs,
) -> KrunVm:  # fmt: skip
    """Restore `plan.state` (or boot cold) under libkrun; the agent answers on `vm.agent`."""
    require_hypervisor(plan.flag)  # before any file is materialized
    disk_section = "disk"
    snapshot_dir = memory = None
    if plan.state is not None:
        layout = StateSections.from_ref(plan.state)
        disk_section = layout.disk
        snapshot_dir, memory = _state_files(payload, layout, run_dir)
    spec = machine_spec(
        machine,
        base_disk=cached_section(payload, disk_section, "disk"),
        overlay=run_dir / "overlay.qcow2",
        console_log=run_dir / "console.log",
        snapshot_dir=snapshot_dir,
        memory_file=memory,
    )
    return KrunVm(libs, spec, flag=plan.flag)


def krun_restore_blocker(state: StateRef, payload: Payload) -> str | None:
    """Why `state` cannot restore on this CPU (the runner then boots cold), or None."""
    layout = StateSections.from_ref(state)
    saved = decode_cpu(payload.read_section(layout.cpu), str(payload.path))
    return restore_blocker(saved, cpu_id())


def machine_spec(
    machine: MachineConfig,
    *,
    base_disk: Path,
    overlay: Path,
    console_log: Path,
    control_socket: Path | None = None,
    snapshot_dir: Path | None = None,
    memory_file: Path | None = None,
) -> KrunSpec:
    """`machine` as libkrun sees it. The build (save) and every run (restore) derive their
    spec here, so a saved state always meets the vCPUs, RAM and devices it was saved with."""
    return KrunSpec(
        cpus=machine.cpus,
        memory_mib=machine.memory_mib,
        base_disk=base_disk,
        overlay=overlay,
        console_log=console_log,
        net=machine.net,
        allow_hosts=machine.allow_hosts,
        allow_cidrs=machine.allow_cidrs,
        dns_resolvers=dns_resolvers() if machine.allow_hosts else (),
        control_socket=control_socket,
        snapshot_dir=snapshot_dir,
        memory_file=memory_file,
    )


def _state_files(payload: Payload, layout: StateSections, run_dir: Path) -> tuple[Path, Path]:
    label = str(payload.path)
    mmap = MemoryMap.decode(
        payload.read_section(layout.memory_map),
        data_size=payload.sections[layout.memory].raw_size,
        label=label,
    )
    manifest = payload.read_section(layout.manifest)
    read_memory_layout(manifest, memory_size=mmap.size, label=label)
    memory = _cached_memory(payload, layout, mmap)
    state = run_dir / "krun-state"
    state.mkdir()
    (state / FILES[2]).write_bytes(manifest)
    (state / FILES[1]).write_bytes(payload.read_section(layout.checkpoint))
    # The memory is handed over as an fd; the link keeps the directory complete for a
    # libkrun that still looks for memory.bin beside the checkpoint.
    os.symlink(memory, state / FILES[0])
    return state, memory


def _cached_memory(payload: Payload, layout: StateSections, mmap: MemoryMap) -> Path:
    """The whole memory image as a sparse cache file (keyed by the digests it is made of).

    With memory.refs, the pages it lists are copied in from the state's disk (cached anyway:
    libkrun needs it as a file) and the whole image is checked against its digest.
    """
    data = payload.sections[layout.memory].sha256
    key = hashlib.sha256(payload.sections[layout.memory_map].sha256 + data)
    refs = disk = None
    if layout.memory_refs is not None:
        refs = DiskRefs.decode(payload.read_section(layout.memory_refs), image_size=mmap.size,
                               disk_size=payload.sections[layout.disk].raw_size,
                               label=f"section {layout.memory_refs}")  # fmt: skip
        disk = cached_section(payload, layout.disk, "disk")
        for name in (layout.memory_refs, layout.disk):
            key.update(payload.sections[name].sha256)

    def produce(tmp: Path) -> None:
        fd = os.open(tmp, os.O_RDWR)
        try:
            read = functools.partial(payload.pread_section, layout.memory)
            unpack_memory(mmap, read, fd, data, str(payload.path))
            if refs is not None and disk is not None:
                disk_fd = os.open(disk, os.O_RDONLY)
                try:
                    apply_refs(fd, refs, disk_fd, 0, f"section {layout.memory}")
                finally:
                    os.close(disk_fd)
        finally:
            os.close(fd)

    return cached_file("krun-memory", key.hexdigest(), produce).resolve()


def dns_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """The host's name servers (trusted resolvers for an allow_hosts policy); 1.1.1.1 if none."""
    found: list[str] = []
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1].split("%", 1)[0])
    return tuple(dict.fromkeys(found)) or ("1.1.1.1",)
