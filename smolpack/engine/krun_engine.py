"""The libkrun engine as the planner and the runner see it (`engine.Engine`, run stage).

Runs a guest of the host's architecture on its hypervisor (KVM, Hypervisor.framework), and
enforces egress allow lists. A state holds host-specific vCPU state: it restores only on the
OS and architecture that saved it, and only on a CPU with what the saving one had.
Stdlib only and cheap: `krun`, `krun_run` and libkrun load only when a run picks this engine.
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


class KrunEngine:
    name = "krun"
    title = "krun"
    saves_states = True
    filters_egress = True

    def usable(self, guest_arch: str, facts: HostFacts) -> tuple[bool, str]:
        if not facts.hypervisor.usable:
            return False, f"hardware virtualization unavailable: {facts.hypervisor.reason}"
        if guest_arch != facts.arch:
            return False, f"the guest is {guest_arch} but this host is {facts.arch}"
        if facts.libkrun is None:
            return False, "libkrun not found"
        return True, facts.hypervisor.reason

    def refusal(self, guest_arch: str, why: str, flag: str) -> HostError:
        return HostError(why, hint=f"use {flag}=qemu")

    def restorable(self, state: StateRef, guest_arch: str, facts: HostFacts) -> bool:
        return (state.host_arch, state.host_os) == (facts.arch, facts.os)

    def setup(
        self, guest_arch: str, facts: HostFacts, state: StateRef | None
    ) -> tuple[str, str | None, str | None]:
        return self.name, None, None

    def restore_blocker(self, plan: EnginePlan, payload: Payload) -> str | None:
        from smolpack.engine.krun_run import krun_restore_blocker

        assert plan.state is not None
        return krun_restore_blocker(plan.state, payload)

    def start(
        self, plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path,
        clock: StageClock,
    ) -> Vm:  # fmt: skip
        from smolpack.engine.krun_run import start_krun_vm
        from smolpack.host import host_target
        from smolpack.pack_libs import runtime_libs_for

        # The pack's own libraries for this host when it carries them, else the installed ones.
        libs = runtime_libs_for(payload, host_target())
        vm = start_krun_vm(plan, payload, machine, run_dir, libs=libs)
        clock.mark("spawn")  # libkrun prepares, forks and restores in one call
        return vm

    def can_save_here(self, guest_arch: str) -> tuple[bool, str]:
        """Whether this host can boot the build VM under libkrun, and why (not)."""
        from smolpack.host import host_arch, hypervisor_status
        from smolpack.runtime_libs import find_runtime_libs

        hv = hypervisor_status()
        if not hv.usable:
            return False, f"hardware virtualization unavailable: {hv.reason}"
        if host_arch() != guest_arch:
            return False, f"the guest is {guest_arch} but this host is {host_arch()}"
        try:
            find_runtime_libs()
        except HostError as err:
            return False, err.message
        return True, hv.reason

    def build_state(self, job: BuildJob) -> SavedState:
        # By name: the launcher stub never saves, and PyInstaller follows `import` statements.
        module = __import__("smolpack.engine.krun_build", fromlist=["build_krun_state"])
        saved: SavedState = module.build_krun_state(job)
        return saved


ENGINE = KrunEngine()
