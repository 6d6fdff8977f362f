"""What an engine is and what it starts (`Engine`, `Vm`): the seam every engine implements.

Imported by engines, the runner and the build, never by the launcher's option parsing (it
loads typing and socket): `smolpack.engine` itself stays empty so `engine.registry` is cheap.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from smolpack.engine.saving import BuildJob, SavedState
    from smolpack.engine.select import EnginePlan, HostFacts
    from smolpack.errors import HostError
    from smolpack.machine import MachineConfig
    from smolpack.payload import Payload, StateRef
    from smolpack.stages import StageClock


class Vm(Protocol):
    """A started (booted or restored) VM, as the runner sees it."""

    # connected channel to the guest agent's port (formats/agent-protocol.md)
    agent: socket.socket
    # the guest console's log file (shown with --debug / on failures)
    console_log: Path

    def stop_reason(self, wait_s: float = 0.0) -> str | None:
        """Why the VM stopped, in a few words, if it has (waiting up to wait_s); else None.

        Asked when the agent channel breaks, so the one error line can name the real
        cause ("guest kernel panic: ...", "QEMU was killed by SIGKILL").
        """
        ...

    def close(self) -> None:
        """Stop the VM for sure; idempotent."""


class Engine(Protocol):
    """One way to run a pack's VM. A module listed in `engine.registry` defines `ENGINE`.

    Cheap to import (stdlib and smolpack's run path only): the planner loads every engine to
    ask `usable`; an engine imports what it runs VMs with inside `start`.
    """

    # as `--engine`, the manifest's states and `--state` spell it
    name: str
    # how messages name it ("QEMU", "krun")
    title: str
    # whether it enforces a pack's egress allow lists (else a run needs the user's consent)
    filters_egress: bool
    # whether `smolpack create` can save its state (`--state` lists it; `build_state`)
    saves_states: bool

    def usable(self, guest_arch: str, facts: HostFacts) -> tuple[bool, str]:
        """Whether a `guest_arch` guest can run here, and why (not), in a few words."""
        ...

    def refusal(self, guest_arch: str, why: str, flag: str) -> HostError:
        """The one-line error when the user forced this engine and `usable` said no."""
        ...

    def restorable(self, state: StateRef, guest_arch: str, facts: HostFacts) -> bool:
        """Whether this host can restore `state` (one of this engine's) at all."""
        ...

    def setup(
        self, guest_arch: str, facts: HostFacts, state: StateRef | None
    ) -> tuple[str, str | None, str | None]:
        """(label, accelerator, binary) of a plan: label as reasons show it, e.g. "qemu (tcg)"."""
        ...

    def restore_blocker(self, plan: EnginePlan, payload: Payload) -> str | None:
        """Why `plan.state` cannot restore here, known before trying (None: try it)."""
        ...

    def start(
        self, plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path,
        clock: StageClock,
    ) -> Vm:  # fmt: skip
        """Boot or restore the VM `plan` says, its agent channel connected; marks `clock`."""
        ...

    def can_save_here(self, guest_arch: str) -> tuple[bool, str]:
        """Whether `smolpack create` can build and save this engine's state here, and why."""
        ...

    def build_state(self, job: BuildJob) -> SavedState:
        """Boot the build VM on `job.base`, run the init steps, save it, flatten its disk."""
        ...
