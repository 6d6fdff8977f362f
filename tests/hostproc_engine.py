"""A test engine: the "VM" is the real guest agent, run as a process on this host.

Everything an engine is, in its own module, and nothing else of smolpack changes for it:
`registry.register("hostproc", "hostproc_engine")` is the one line that adds it (in tests;
a shipped engine adds that line to `registry.ENGINES`). The agent runs with `--port-fd`
(formats/agent-protocol.md section 8: no mounts, clock, RNG or power off), so a run's
program runs here, in the pack's workdir, with the pack's environment.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from smolpack.agent.binary import agent_binary
from smolpack.engine.interface import Vm
from smolpack.engine.saving import BuildJob, SavedState
from smolpack.engine.select import EnginePlan, HostFacts
from smolpack.errors import HostError
from smolpack.machine import MachineConfig
from smolpack.payload import Payload, StateRef
from smolpack.stages import StageClock


class HostProcVm:
    def __init__(self, run_dir: Path) -> None:
        self.console_log = run_dir / "console.log"
        ours, theirs = socket.socketpair()
        with open(self.console_log, "wb") as log:
            self._proc = subprocess.Popen(
                [str(agent_binary()), "--port-fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        theirs.close()
        self.agent = ours

    def stop_reason(self, wait_s: float = 0.0) -> str | None:
        try:
            code = self._proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None
        return f"the agent process exited with code {code}"

    def close(self) -> None:
        self.agent.close()  # end of file: a --port-fd agent exits 0
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class HostProcEngine:
    name = "hostproc"
    title = "host process"
    filters_egress = False
    saves_states = False  # `create --state` does not list it

    def usable(self, guest_arch: str, facts: HostFacts) -> tuple[bool, str]:
        if guest_arch != facts.arch:
            return False, f"hostproc runs {facts.arch} programs only"
        return True, "the agent runs as a host process"

    def refusal(self, guest_arch: str, why: str, flag: str) -> HostError:
        return HostError(why, hint=f"use {flag}=auto")

    def restorable(self, state: StateRef, guest_arch: str, facts: HostFacts) -> bool:
        return False  # nothing to restore: every run starts the agent afresh

    def setup(
        self, guest_arch: str, facts: HostFacts, state: StateRef | None
    ) -> tuple[str, str | None, str | None]:
        return self.name, None, None

    def restore_blocker(self, plan: EnginePlan, payload: Payload) -> str | None:
        return None

    def start(
        self, plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path,
        clock: StageClock,
    ) -> Vm:  # fmt: skip
        vm = HostProcVm(run_dir)
        clock.mark("spawn")
        return vm

    def can_save_here(self, guest_arch: str) -> tuple[bool, str]:
        return False, "hostproc keeps no state"

    def build_state(self, job: BuildJob) -> SavedState:
        raise NotImplementedError("hostproc keeps no state")


ENGINE = HostProcEngine()
