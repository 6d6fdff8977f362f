"""What a guest's console log says, to explain a VM that did not answer or stopped (any engine).

Every engine logs the guest console (hvc0) to a file (`Vm.console_log`). The guest kernel
runs with `quiet`, and the agent, as PID 1, prints one line when it starts, so an empty
log means the kernel never got as far as starting the agent. A panic line is printed whatever
the log level (KERN_EMERG), so `panic_message` finds it when the console got it out in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smolpack.engine.console_log import read_tail
from smolpack.errors import (
    AgentChannelClosed,
    AgentError,
    AgentTimeout,
    SmolpackError,
    VmStopped,
    VmUnresponsive,
)

if TYPE_CHECKING:
    from smolpack.engine.interface import Vm

_LINE_MAX = 200  # characters of a console line quoted in a one-line error
_PANIC = "Kernel panic - not syncing: "
STOP_WAIT_S = 3.0  # after the agent channel broke, how long QEMU may take to be reaped


def _clip(line: str) -> str:
    line = line.strip()
    return line[: _LINE_MAX - 3] + "..." if len(line) > _LINE_MAX else line


def console_tail(log: Path, lines: int = 15) -> list[str]:
    """The last `lines` non-blank lines of a console log ([] if empty or unreadable).

    Reads only the log's last `TAIL_BYTES` (console_log.read_tail), whatever its size."""
    text = read_tail(log).decode(errors="replace")
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def silent_guest_detail(log: Path, *, agent_answered: bool = False) -> str:
    """One clause for an error about a guest agent that did not answer: one that never
    answered, or (`agent_answered`) one that answered before and then stopped."""
    tail = console_tail(log, 1)
    if tail:
        return f"the guest console's last line: {_clip(tail[-1])}"
    if agent_answered:  # so the agent did start: an empty console says nothing more
        return "the guest console is empty"
    return "the guest printed nothing: its kernel did not get as far as starting the agent"


def panic_message(log: Path) -> str | None:
    """The reason of the last kernel panic in a console log, e.g. "Attempted to kill init!
    exitcode=0x0000000b" (None if the kernel did not panic)."""
    for line in reversed(console_tail(log, 200)):
        at = line.find(_PANIC)
        if at >= 0:
            return _clip(line[at + len(_PANIC) :]) or "(no reason given)"
    return None


def explain_agent_failure(vm: Vm, err: AgentError) -> SmolpackError:
    """The error to show for `err` from the agent of `vm`: the VM's own fate when it
    stopped (a crash ends the channel), else what the console showed for a timeout."""
    # A closed channel usually means the VM is gone: wait for its process to be reaped.
    reason = vm.stop_reason(STOP_WAIT_S if isinstance(err, AgentChannelClosed) else 0.0)
    if reason is not None:
        return VmStopped(f"the VM stopped unexpectedly ({reason})")
    if isinstance(err, AgentTimeout):
        # the same class (a VmUnresponsive keeps its exit code), with the console's word
        answered = isinstance(err, VmUnresponsive)
        detail = silent_guest_detail(vm.console_log, agent_answered=answered)
        return type(err)(f"{err}; {detail}")
    return err
