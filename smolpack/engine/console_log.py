"""The guest console, recorded to a bounded log and read back by its tail (run stage, any engine).

QEMU used to write the console straight to a file (`-chardev file`): unbounded (a guest that
prints in a loop fills the disk of whoever runs the tool) and, on a failure, read back whole.
Now QEMU writes into a socket (`-chardev socket,fd=N`: no path on its command line either),
and a daemon thread copies it into `console.log`; libkrun's VMM child writes hvc0 (and its
own stdio, `krun.log`) into such sockets too. Past `CONSOLE_CAP` bytes that file becomes
`console.log.1` (replacing the previous one) and a new one starts, so at most 2 × CAP bytes
are ever kept, and the newest lines are always there. Readers (`read_tail`) read at most
`TAIL_BYTES` from the end of the two files.

Stdlib only: the launcher imports this module.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

CONSOLE_CAP = 1 << 20  # bytes per file; two files at most (2 MiB per run)
TAIL_BYTES = 64 << 10  # what a reader looks at: ~1000 console lines


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def read_tail(path: Path, limit: int = TAIL_BYTES) -> bytes:
    """The last `limit` bytes of the log (the rotated file's end first if needed)."""
    out = b""
    for part in (path, rotated(path)):
        want = limit - len(out)
        if want <= 0:
            break
        try:
            with open(part, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - want))
                out = f.read(want) + out
        except OSError:
            continue
    return out


class ConsoleRecorder:
    """Owns the socket QEMU writes the console into; copies it to a bounded log."""

    def __init__(self, path: Path, *, cap: int = CONSOLE_CAP) -> None:
        self.path = path
        self._cap = cap
        ours, self._theirs = socket.socketpair()
        # Opened here, not in the pump: the log exists once the recorder does.
        out = open(path, "wb")  # noqa: SIM115 - the pump closes it
        self._thread = threading.Thread(
            target=self._pump, args=(ours, out), name="smolpack-console", daemon=True
        )
        self._thread.start()

    def engine_fd(self) -> int:
        """The fd to hand to the engine; call `started()` once it holds its copy."""
        return self._theirs.fileno()

    def started(self) -> None:
        # Our copy of QEMU's end must go, or the pump never sees EOF when QEMU exits.
        self._theirs.close()

    def drain(self, timeout_s: float = 2.0) -> None:
        """Wait until everything QEMU wrote before it exited is in the log."""
        self._theirs.close()
        self._thread.join(timeout_s)

    def _pump(self, sock: socket.socket, out: io.BufferedWriter) -> None:
        written = 0
        try:
            while data := sock.recv(min(65536, self._cap)):
                if written + len(data) > self._cap and written:
                    out.close()
                    os.replace(self.path, rotated(self.path))
                    out = open(self.path, "wb")  # noqa: SIM115
                    written = 0
                out.write(data)
                out.flush()  # readers (a timeout's explanation) look while QEMU runs
                written += len(data)
        except OSError:
            pass  # the run dir went away under us: nothing left to record
        finally:
            out.close()
            sock.close()
