"""The QEMU engine's save step (create stage; `QemuEngine.build_state`).

Boot the build VM under TCG on the base image (read-only, plus a writable qcow2 overlay),
run the init steps, pause and save it (migration stream, and in the lazy layout its RAM
file), then flatten overlay + base into the disk that memory expects: the guest is paused
while we copy, so both are from the same instant (formats/qemu-state.md).
"""

from __future__ import annotations

from pathlib import Path

from smolpack.build_steps import (
    BOOT_TIMEOUT_S,
    boot_handshake,
    keep_console,
    qemu_img,
    run_init_step,
)
from smolpack.engine.console import explain_agent_failure
from smolpack.engine.disk_refs import split_in_place
from smolpack.engine.qemu import QemuMachine, QemuVm, RamFile, RootDisk
from smolpack.engine.qemu_compat import qemu_facts
from smolpack.engine.qemu_state import state_sections
from smolpack.engine.saving import BuildJob, SavedState, Section
from smolpack.errors import AgentChannelClosed, BuildError
from smolpack.host import find_qemu
from smolpack.machine import MachineConfig
from smolpack.payload import SectionKind, StateRef
from smolpack.payload.layout import Codec
from smolpack.progress import Progress
from smolpack.smolfile import SmolConfig


def build_qemu_state(job: BuildJob) -> SavedState:
    """Boot, run the init steps, save: the state `qemu-<guest arch>` and the pack's disk.

    Consumes `job.base` (flattened into the disk), so QEMU builds last; its disk is the
    pack's (`own_disk` is never asked of it).
    """
    assert not job.own_disk, "QEMU builds last (registry order): its disk is the pack's"
    name = f"qemu-{job.guest_arch}"
    machine = job.machine
    qemu_machine = QemuMachine(
        guest_arch=job.guest_arch,
        cpus=machine.cpus,
        memory_mib=machine.memory_mib,
        kernel=job.kernel,
        cmdline=machine.kernel_cmdline,
        net=machine.net,
    )
    stream, ram, disk = _boot_build_and_save(
        job.config, machine, qemu_machine, job.base, job.work, job.progress,
        lazy_memory=job.lazy_memory,
    )  # fmt: skip
    refs = None
    if ram is not None and job.disk_refs:
        with job.progress.step("Finding RAM pages that are disk blocks"):
            refs = job.work / "memory.refs"
            split_in_place(ram, disk, refs)
    names = state_sections(name, lazy=ram is not None, refs=refs is not None)
    ref = StateRef(
        name=name,
        engine="qemu",
        host_arch=job.guest_arch,
        host_os="linux",
        sections=names,
        # A run's QEMU must match these to restore (engine/qemu_compat.py).
        recorded=qemu_facts(find_qemu("x86_64")),  # job.guest_arch (build.GUEST_ARCH)
    )
    # The state's stream, then (lazy layout) its RAM file, which a run maps from its cache
    # in both cases (QEMU 7.2 cannot map a range of the pack).
    codec = Codec.ZSTD if job.compress else Codec.NONE
    parts = [stream, *([ram] if ram else []), *([refs] if refs else [])]
    sections = [Section(n, SectionKind.STATE, path, codec)
                for n, path in zip(names, parts, strict=True)]  # fmt: skip
    if refs is not None:  # small (a few bytes per run of pages): always zstd
        sections[-1] = sections[-1]._replace(codec=Codec.ZSTD)
    return SavedState(ref=ref, sections=sections, disk=disk)


def _boot_build_and_save(
    config: SmolConfig,
    machine: MachineConfig,
    qemu_machine: QemuMachine,
    base: Path,
    work: Path,
    progress: Progress,
    *,
    lazy_memory: bool,
) -> tuple[Path, Path | None, Path]:
    """Boot, run the init steps, save: (migration stream, RAM file or None, flat disk)."""
    overlay = work / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
    state = work / "state.bin"
    # Lazy memory: the guest's RAM is this file (shared), so the saved stream leaves it out.
    ram = RamFile(path=work / "memory.ram", shared=True) if lazy_memory else None
    vm = QemuVm(
        qemu_machine,
        RootDisk(path=base, size=base.stat().st_size, overlay=overlay),
        run_dir=work,
        ram=ram,
    )
    try:
        with progress.step("Booting the build VM"):
            session = boot_handshake(vm, BOOT_TIMEOUT_S)
        for number, step in enumerate(config.init, start=1):
            first, *more = step.strip().splitlines() or [""]
            label = first + (f" (+{len(more)} lines)" if more else "")
            with progress.step(f"init step {number}/{len(config.init)}: {label}"):
                run_init_step(session, number, step, machine, config)
        with progress.step("Saving the warmed-up VM"):
            session.prepare_snapshot()
            vm.save_state(state)
    except (BuildError, KeyboardInterrupt):
        raise  # the step's own output (or the user) already said why
    except AgentChannelClosed as exc:  # an init step crashed the VM: say how
        keep_console(vm, progress)
        raise explain_agent_failure(vm, exc) from exc
    except BaseException:
        keep_console(vm, progress)
        raise
    finally:
        vm.close()
    with progress.step("Flattening the disk"):
        disk = work / "disk.raw"
        # The guest was paused when its state was saved, so overlay + base is exactly the
        # disk that memory expects. convert writes zeros as holes: the result stays sparse.
        qemu_img("convert", "-O", "raw", str(overlay), str(disk))
        overlay.unlink()
        base.unlink()
    return state, ram.path if ram else None, disk
