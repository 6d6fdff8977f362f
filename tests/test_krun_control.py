"""The libkrun control-socket client against a real Unix socket server speaking its protocol.

The server below behaves as libkrun's `handle_control_stream` does (formats/krun-state.md,
"Control socket"): read one line, answer one line, close. Variants misbehave on purpose.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smolpack.engine.krun_control import (
    STATE_FILES,
    control_command,
    save_state,
    wait_for_socket,
)
from smolpack.errors import EngineError

Handler = Callable[[socket.socket, bytes], None]


class FakeVmm:
    """A control socket server: `handler(conn, line)` answers each connection."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self._handler = handler
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                line = data.split(b"\n", 1)[0]
                self.lines.append(data)
                self._handler(conn, line)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[[Handler], FakeVmm]]:
    servers: list[FakeVmm] = []

    def start(handler: Handler) -> FakeVmm:
        server = FakeVmm(tmp_path / f"ctl{len(servers)}.sock", handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def libkrun_like(conn: socket.socket, line: bytes) -> None:
    verb, _, arg = line.decode().strip().partition(" ")
    verb = verb.upper()
    if verb == "STATUS":
        conn.sendall(b"OK running\n")
    elif verb == "SAVE":
        target = Path(arg)
        try:
            target.mkdir()
        except OSError as err:
            conn.sendall(f"ERR EIO create {target}: {err}\n".encode())
            return
        (target / "memory.bin").write_bytes(b"\0" * 16384)
        (target / "checkpoint.bin").write_bytes(b"cp")
        (target / "manifest.bin").write_bytes(b"SMOLPORT")
        conn.sendall(b"OK saved (16384 bytes, 1 regions, paused)\n")
    else:
        conn.sendall(b"ERR EINVAL unknown command\n")


def test_ok_reply_and_one_line_per_connection(serve: Callable[[Handler], FakeVmm]) -> None:
    vmm = serve(libkrun_like)
    assert control_command(vmm.path, "STATUS", timeout_s=5) == "running"
    assert control_command(vmm.path, "status", timeout_s=5) == "running"
    assert vmm.lines == [b"STATUS\n", b"status\n"]  # exactly one line each, nothing more


def test_err_reply_names_verb_and_errno(serve: Callable[[Handler], FakeVmm]) -> None:
    vmm = serve(libkrun_like)
    with pytest.raises(EngineError) as info:
        control_command(vmm.path, "FROB x", timeout_s=5)
    assert str(info.value) == "libkrun refused FROB: unknown command (EINVAL)"


def test_save_writes_the_three_files(serve: Callable[[Handler], FakeVmm], tmp_path: Path) -> None:
    vmm = serve(libkrun_like)
    dest = save_state(vmm.path, tmp_path / "state", timeout_s=5)
    assert sorted(p.name for p in dest.iterdir()) == sorted(STATE_FILES)
    assert vmm.lines == [f"SAVE {tmp_path / 'state'}\n".encode()]
    # SAVE creates the directory: an existing one is refused before anything is sent.
    with pytest.raises(EngineError, match="already exists"):
        save_state(vmm.path, dest, timeout_s=5)
    assert len(vmm.lines) == 1


def test_save_ok_without_files_is_an_error(
    serve: Callable[[Handler], FakeVmm], tmp_path: Path
) -> None:
    def liar(conn: socket.socket, line: bytes) -> None:
        Path(line.decode().split(" ", 1)[1]).mkdir()
        conn.sendall(b"OK saved (0 bytes, 0 regions, paused)\n")

    vmm = serve(liar)
    with pytest.raises(EngineError, match="memory.bin, checkpoint.bin, manifest.bin is missing"):
        save_state(vmm.path, tmp_path / "s", timeout_s=5)


def test_timeout_when_the_peer_never_answers(serve: Callable[[Handler], FakeVmm]) -> None:
    release = threading.Event()
    vmm = serve(lambda conn, line: release.wait(5))
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="did not answer STATUS within 0.3 s"):
        control_command(vmm.path, "STATUS", timeout_s=0.3)
    assert time.monotonic() - t0 < 3
    release.set()


def test_peer_that_closes_early(serve: Callable[[Handler], FakeVmm]) -> None:
    vmm = serve(lambda conn, line: None)  # reads the line, closes without a word
    with pytest.raises(EngineError, match="closed before answering STATUS"):
        control_command(vmm.path, "STATUS", timeout_s=5)


def test_peer_that_sends_half_a_line(serve: Callable[[Handler], FakeVmm]) -> None:
    vmm = serve(lambda conn, line: conn.sendall(b"OK sav"))
    with pytest.raises(EngineError, match=r"closed before answering SAVE \(got b'OK sav'\)"):
        control_command(vmm.path, "SAVE /x", timeout_s=5)


def test_garbage_reply(serve: Callable[[Handler], FakeVmm]) -> None:
    vmm = serve(lambda conn, line: conn.sendall(b"HELLO there\n"))
    with pytest.raises(EngineError, match="unexpected reply to STATUS"):
        control_command(vmm.path, "STATUS", timeout_s=5)


def test_no_socket(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="STATUS failed: No such file or directory"):
        control_command(tmp_path / "none.sock", "STATUS", timeout_s=1)


def test_command_must_be_one_bounded_line(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="one line"):
        control_command(tmp_path / "x", "SAVE a\nRESUME", timeout_s=1)
    with pytest.raises(EngineError, match="one line"):
        control_command(tmp_path / "x", "SAVE /" + "x" * 5000, timeout_s=1)


def test_wait_for_socket(tmp_path: Path) -> None:
    path = tmp_path / "later.sock"
    with pytest.raises(EngineError, match="exited before opening"):
        wait_for_socket(path, timeout_s=5, alive=lambda: False)
    with pytest.raises(EngineError, match="within 0.05 s"):
        wait_for_socket(path, timeout_s=0.05)
    path.touch()
    wait_for_socket(path, timeout_s=0.05)
