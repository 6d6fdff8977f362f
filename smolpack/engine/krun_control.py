"""Client of libkrun's control socket (create stage: saving a krun state; formats/krun-state.md).

The VMM binds a Unix stream socket (`krun_set_control_socket`) once the VM is built. The
protocol, from the fork's `handle_control_stream`: one connection carries one command; the
client writes one line (`VERB [ARG]\\n`, at most 4096 bytes, verb case-insensitive), the
VMM writes one line back and closes: `OK <text>\\n` or `ERR <ERRNO> <text>\\n`.

We use `SAVE <dir>`: the VMM creates `<dir>` (it must not exist), writes `memory.bin`,
`checkpoint.bin` and `manifest.bin` there (manifest last: its presence marks a complete
save), answers `OK saved (<bytes> bytes, <regions> regions, paused)` and leaves the VM
paused, so the caller can copy the disk at the same instant. On failure it resumes the VM
and removes `<dir>`. `STATUS` answers `OK <run state>`.

Stdlib only.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from smolpack.errors import EngineError

MAX_COMMAND_BYTES = 4096  # the VMM refuses longer command lines
MAX_REPLY_BYTES = 65536  # more than any reply we know; a runaway peer is cut off here


def control_command(sock_path: Path, command: str, *, timeout_s: float) -> str:
    """Send one command line; return the text after `OK `, or raise EngineError."""
    line = command.encode() + b"\n"
    if b"\n" in command.encode() or len(line) > MAX_COMMAND_BYTES:
        raise EngineError(f"control command is not one line of at most {MAX_COMMAND_BYTES} bytes")
    verb = command.split(" ", 1)[0]
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(os.fspath(sock_path))
            sock.sendall(line)
            reply = _read_line(sock, deadline, verb)
        except TimeoutError:
            raise EngineError(
                f"libkrun control socket did not answer {verb} within {timeout_s:g} s"
            ) from None
        except OSError as err:
            raise EngineError(
                f"libkrun control socket {sock_path}: {verb} failed: {err.strerror or err}"
            ) from None
    status, _, text = reply.partition(" ")
    if status == "OK":
        return text
    if status == "ERR":
        code, _, why = text.partition(" ")
        raise EngineError(f"libkrun refused {verb}: {why or code} ({code})")
    raise EngineError(f"libkrun control socket sent an unexpected reply to {verb}: {reply[:80]!r}")


def _read_line(sock: socket.socket, deadline: float, verb: str) -> str:
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise EngineError(
                f"libkrun control socket closed before answering {verb}"
                + (f" (got {data[:80]!r})" if data else "")
            )
        data += chunk
        if len(data) > MAX_REPLY_BYTES:
            raise EngineError(f"libkrun control socket reply to {verb} is too long")
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def save_state(sock_path: Path, dest: Path, *, timeout_s: float = 300.0) -> Path:
    """`SAVE dest`: write the three state files there; the VM stays paused. Returns dest."""
    if dest.exists():
        raise EngineError(f"krun state directory {dest} already exists (SAVE creates it)")
    if not dest.is_absolute():
        raise EngineError(f"krun state directory must be absolute: {dest}")
    control_command(sock_path, f"SAVE {dest}", timeout_s=timeout_s)
    missing = [n for n in STATE_FILES if not (dest / n).is_file()]
    if missing:
        raise EngineError(f"libkrun said the state was saved but {', '.join(missing)} is missing")
    return dest


def wait_for_socket(sock_path: Path, *, timeout_s: float, alive: object = None) -> None:
    """Wait until the VMM has bound its control socket (it does so after building the VM)."""
    deadline = time.monotonic() + timeout_s
    while not sock_path.exists():
        if callable(alive) and not alive():
            raise EngineError("the libkrun VM exited before opening its control socket")
        if time.monotonic() > deadline:
            raise EngineError(f"libkrun did not open its control socket within {timeout_s:g} s")
        time.sleep(0.01)


STATE_FILES = ("memory.bin", "checkpoint.bin", "manifest.bin")
