"""Hypervisor engines (run stage): QEMU (`qemu`) and libkrun (`krun`).

`select.plan_run` decides which one runs a pack; each engine starts a `Vm`. The runner
only needs what `Vm` declares: the connected agent channel, the console log, and `close`.
Nothing is imported here so the launcher loads only the engine it picked.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol


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
