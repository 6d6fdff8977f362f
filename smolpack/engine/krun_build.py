"""The libkrun engine's save step (create stage; `KrunEngine.build_state`).

Runs only where hardware virtualization works (never on our kvm_pvm machines): the build VM
boots under libkrun on the base image plus its own overlay (the base stays for the next
engine), its state is saved through libkrun's control socket (`SAVE <dir>`, VM left paused),
and the overlay is flattened while it is paused, so memory and disk are from the same
instant. The state `krun-<arch>` carries that disk unless it is the pack's.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from smolpack.build_steps import (
    BOOT_TIMEOUT_S,
    boot_handshake,
    keep_console,
    qemu_img,
    run_init_step,
)
from smolpack.engine.saving import BuildJob, SavedState, Section
from smolpack.host import host_arch, host_os
from smolpack.machine import MachineConfig
from smolpack.payload import StateRef
from smolpack.progress import Progress
from smolpack.runtime_libs import find_runtime_libs
from smolpack.smolfile import SmolConfig


def build_krun_state(job: BuildJob) -> SavedState:
    """The state `krun-<host arch>`; its flattened disk is the pack's unless `job.own_disk`."""
    ref, sections, disk = _krun_build(
        job.config, job.machine, job.base, job.work, job.progress, own_disk=job.own_disk,
        disk_refs=job.disk_refs,
    )  # fmt: skip
    return SavedState(ref=ref, sections=sections, disk=None if job.own_disk else disk)


def _krun_build(
    config: SmolConfig, machine: MachineConfig, base: Path, work: Path, progress: Progress,
    *, own_disk: bool, disk_refs: bool,
) -> tuple[StateRef, list[Section], Path]:  # fmt: skip
    """Boot the build VM under libkrun, run the init steps, SAVE, flatten its disk."""
    from smolpack.engine.krun import KrunVm
    from smolpack.engine.krun_control import save_state, wait_for_socket
    from smolpack.engine.krun_run import machine_spec
    from smolpack.engine.krun_state import CPU_FILE, encode_cpu, state_ref, state_sections
    from smolpack.host import cpu_id

    # A short directory for the socket: sun_path holds 108 bytes, `work` may be deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="smolpack-krun-"))
    spec = machine_spec(
        machine,
        base_disk=base.resolve(),
        overlay=work / "krun-overlay.qcow2",
        console_log=work / "krun-console.log",
        control_socket=sock_dir / "control.sock",
    )
    state_dir, disk = work / "krun-state", work / "krun-disk.raw"
    try:
        with progress.step("Booting the krun build VM"):
            vm = KrunVm(find_runtime_libs(), spec)
        try:
            assert spec.control_socket is not None
            wait_for_socket(spec.control_socket, timeout_s=BOOT_TIMEOUT_S, alive=vm.alive)
            session = boot_handshake(vm, BOOT_TIMEOUT_S)
            for number, step in enumerate(config.init, start=1):
                with progress.step(f"init step {number}/{len(config.init)} (krun)"):
                    run_init_step(session, number, step, machine, config)
            with progress.step("Saving the warmed-up krun VM"):
                session.prepare_snapshot()
                save_state(spec.control_socket, state_dir)
                (state_dir / CPU_FILE).write_bytes(encode_cpu(cpu_id()))
            with progress.step("Flattening the krun disk"):
                qemu_img("convert", "-O", "raw", str(spec.overlay), str(disk))
        except BaseException:
            keep_console(vm, progress)
            raise
        finally:
            vm.close()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    spec.overlay.unlink(missing_ok=True)
    ref = state_ref(host_arch=host_arch(), host_os=host_os(), own_disk=own_disk, refs=disk_refs)
    sources = state_sections(ref, state_dir, disk if own_disk else None, memory_disk=disk)
    return ref, [Section(s.name, s.kind, s.path, s.codec) for s in sources], disk
