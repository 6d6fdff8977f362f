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

    def close(self) -> None:
        """Stop the VM for sure; idempotent."""
