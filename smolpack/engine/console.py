"""What a guest's console log says, to explain a VM that did not answer (any engine).

Every engine logs the guest console (hvc0) to a file (`Vm.console_log`). The guest kernel
runs with `quiet`, and the agent, as PID 1, prints one line when it starts, so an empty
log means the kernel never got as far as starting the agent.
"""

from __future__ import annotations

from pathlib import Path

_LINE_MAX = 200  # characters of a console line quoted in a one-line error


def console_tail(log: Path, lines: int = 15) -> list[str]:
    """The last `lines` non-blank lines of a console log ([] if empty or unreadable)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def silent_guest_detail(log: Path) -> str:
    """One clause for an error about a guest agent that never answered."""
    tail = console_tail(log, 1)
    if not tail:
        return "the guest printed nothing: its kernel did not get as far as starting the agent"
    last = tail[-1].strip()
    if len(last) > _LINE_MAX:
        last = last[: _LINE_MAX - 3] + "..."
    return f"the guest console's last line: {last}"
