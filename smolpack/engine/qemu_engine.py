"""The QEMU engine as the planner and the runner see it (`engine.Engine`, run stage).

Runs any guest QEMU emulates: under the host's hypervisor for a cold boot of the host's
architecture, under TCG otherwise. States are saved under TCG, and a TCG migration stream
must be loaded under TCG (KVM would expose other CPUID bits than the saved vCPU had), so a
restore is always TCG. Its user-mode network cannot filter egress.
Stdlib only and cheap: `qemu_run` (QEMU, QMP, qcow2) loads only when a run picks this engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smolpack.engine.interface import Vm
from smolpack.engine.select import EnginePlan, HostFacts
from smolpack.errors import HostError
from smolpack.machine import MachineConfig
from smolpack.payload import Payload, StateRef
from smolpack.stages import StageClock

if TYPE_CHECKING:
    from smolpack.engine.saving import BuildJob, SavedState


class QemuEngine:
    name = "qemu"
    title = "QEMU"
    saves_states = True
    filters_egress = False

    def usable(self, guest_arch: str, facts: HostFacts) -> tuple[bool, str]:
        if facts.qemu is None:
            return False, f"qemu-system-{guest_arch} not found"
        return True, f"qemu-system-{guest_arch} is installed"

    def refusal(self, guest_arch: str, why: str, flag: str) -> HostError:
        return HostError(f"{why} on PATH", hint=f"install QEMU or use {flag}=krun")

    def restorable(self, state: StateRef, guest_arch: str, facts: HostFacts) -> bool:
        # A TCG stream is portable between hosts, but this engine restores the guest's arch.
        return state.host_arch == guest_arch

    def setup(
        self, guest_arch: str, facts: HostFacts, state: StateRef | None
    ) -> tuple[str, str | None, str | None]:
        hv_accel = "hvf" if facts.os == "macos" else "kvm"
        same_arch = guest_arch == facts.arch
        accel = hv_accel if state is None and facts.hypervisor.usable and same_arch else "tcg"
        return f"qemu ({accel})", accel, facts.qemu

    def restore_blocker(self, plan: EnginePlan, payload: Payload) -> str | None:
        from smolpack.engine.qemu_compat import restore_blocker

        if plan.state is None or plan.qemu is None:
            return None
        try:
            return restore_blocker(plan.state, Path(plan.qemu))
        except (HostError, OSError):
            return None  # QEMU cannot say its version: let the restore try (and maybe fail)

    def start(
        self, plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path,
        clock: StageClock,
    ) -> Vm:  # fmt: skip
        from smolpack.engine.qemu_run import start_qemu_vm

        return start_qemu_vm(plan, payload, machine, run_dir, clock)

    def can_save_here(self, guest_arch: str) -> tuple[bool, str]:
        # Saved under TCG: any host with QEMU (a missing one fails the build, saying so).
        return True, "QEMU saves under TCG"

    def build_state(self, job: BuildJob) -> SavedState:
        # By name: the launcher stub never saves, and PyInstaller follows `import` statements.
        module = __import__("smolpack.engine.qemu_build", fromlist=["build_qemu_state"])
        saved: SavedState = module.build_qemu_state(job)
        return saved


ENGINE = QemuEngine()
