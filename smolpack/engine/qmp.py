"""A minimal QMP client over an already connected socket (run stage, QEMU engine).

We hand QEMU one end of a socketpair (`-chardev socket,fd=N`), so there is no
socket file to create, race on or clean up. QMP is line-delimited JSON: a
greeting, then `{"execute": ...}` → `{"return": ...}` or `{"error": ...}`, with
asynchronous `{"event": ...}` lines interleaved; events are queued, not lost.
"""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

from smolpack.errors import EngineError


class QmpClient:
    def __init__(self, sock: socket.socket, *, timeout_s: float = 30.0) -> None:
        self._sock = sock
        self._buf = b""
        self._timeout_s = timeout_s
        self.events: list[dict[str, Any]] = []
        self._read_message(timeout_s)  # the greeting
        self.execute("qmp_capabilities")

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, fds: list[int] | None = None
    ) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.sendall(data)
        except OSError as exc:
            raise EngineError(f"QEMU monitor closed while sending {command!r}: {exc}") from exc
        while True:
            reply = self._read_message(self._timeout_s)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                desc = reply["error"].get("desc", reply["error"])
                raise EngineError(f"QEMU refused {command!r}: {desc}")
            return reply.get("return")

    def wait_event(self, names: set[str], timeout_s: float) -> dict[str, Any]:
        """Return the first queued or arriving event whose name is in `names`."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") in names:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(f"QEMU did not report {sorted(names)} within {timeout_s:.0f} s")
            msg = self._read_message(remaining)
            if "event" in msg:
                self.events.append(msg)

    def _read_message(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                raise EngineError(f"QEMU monitor did not answer within {timeout_s:.0f} s")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EngineError("QEMU exited unexpectedly (monitor connection closed)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise EngineError(f"QEMU monitor sent invalid JSON: {line[:80]!r}") from exc
        if not isinstance(msg, dict):
            raise EngineError(f"QEMU monitor sent an unexpected message: {line[:80]!r}")
        return msg
