"""Channels (formats/agent-protocol.md 5.7) between the host hub and the real agent.

The agent runs on this host in `--port-fd` mode, so "the guest's 127.0.0.1" is ours: a
forwarded port reaches a server these tests start, and the ssh-agent socket is served in a
temporary directory (SMOLPACK_AGENT_RUN_DIR) instead of /run.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smolpack.agent import protocol as p
from smolpack.agent.binary import agent_binary
from smolpack.agent.channels import ChannelHub, PortForward, listen_forwards
from smolpack.agent.session import AgentSession, handshake

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return agent_binary(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def session(agent_path: Path, tmp_path: Path) -> Iterator[AgentSession]:
    host, guest = socket.socketpair()
    env = {**os.environ, "SMOLPACK_AGENT_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen(
        [str(agent_path), "--port-fd", str(guest.fileno())], pass_fds=[guest.fileno()], env=env
    )
    guest.close()
    s = handshake(host, timeout_s=5)
    try:
        yield s
    finally:
        s.close()
        host.close()
        assert proc.wait(timeout=5) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def echo_server() -> tuple[socket.socket, int]:
    """A TCP server on 127.0.0.1 that echoes every connection (one thread each)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def run_while(
    session: AgentSession, tmp_path: Path, hub: ChannelHub, work: Callable[[], None],
    request: p.RunRequest | None = None,
) -> tuple[int, bytes]:  # fmt: skip
    """Run `sh -c 'cat >/dev/null'` in the agent while `work` runs in a thread; end it after."""
    r, w = os.pipe()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            os.close(w)

    thread = threading.Thread(target=body)
    thread.start()
    out = tmp_path / "out"
    with open(out, "wb") as f:
        req = request or p.RunRequest(argv=("sh", "-c", "cat >/dev/null"), env=(PATH,))
        code = session.run(req, stdin_fd=r, stdout_fd=f.fileno(), stderr_fd=2, channels=hub)
    os.close(r)
    thread.join()
    if errors:
        raise errors[0]
    return code, out.read_bytes()


def test_several_connections_at_once_are_byte_exact(session: AgentSession, tmp_path: Path) -> None:
    srv, guest_port = echo_server()
    host_port = free_port()
    hub = ChannelHub(listen_forwards([PortForward(host_port, guest_port)]), None)
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        data = os.urandom(3 << 20)  # > the 1 MiB window, three times over
        with socket.create_connection(("127.0.0.1", host_port)) as c:
            sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
            sender.start()
            got = bytearray()
            while chunk := c.recv(65536):
                got += chunk
            sender.join()
        results[i] = hashlib.sha256(got).digest() if got == data else b"mismatch"

    def work() -> None:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    code, _ = run_while(session, tmp_path, hub, work)
    srv.close()
    assert code == 0
    assert sorted(results) == [0, 1, 2, 3]
    assert b"mismatch" not in results.values()


def test_closed_guest_port_closes_the_client_cleanly(session: AgentSession, tmp_path: Path) -> None:
    host_port, nobody = free_port(), free_port()
    hub = ChannelHub(listen_forwards([PortForward(host_port, nobody)]), None)
    got: list[bytes] = []

    def work() -> None:
        for _ in range(3):  # and the forward keeps working after each refusal
            with socket.create_connection(("127.0.0.1", host_port), timeout=10) as c:
                c.sendall(b"hello?")
                got.append(c.recv(100))  # b"" = clean EOF; a reset would raise

    code, _ = run_while(session, tmp_path, hub, work)
    assert code == 0
    assert got == [b"", b"", b""]


def test_busy_host_port_is_one_line(tmp_path: Path) -> None:
    from smolpack.errors import HostError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(HostError) as info:
            listen_forwards([PortForward(port, 80)])
    assert info.value.message == (
        f"cannot forward port {port} to the guest's 80: 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.skipif(not shutil.which("ssh-agent"), reason="openssh-client is not installed")
def test_ssh_add_lists_the_host_agents_key_through_the_channel(
    session: AgentSession, tmp_path: Path
) -> None:
    sock = str(tmp_path / "host-agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        key = tmp_path / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "smol-test", "-f", str(key)],
            check=True,
        )
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        for _ in range(50):
            if os.path.exists(sock):
                break
            threading.Event().wait(0.1)
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True)
        hub = ChannelHub([], sock)
        guest_sock = tmp_path / "run" / "ssh-agent.sock"
        request = p.RunRequest(
            argv=("ssh-add", "-l"), env=(PATH, f"SSH_AUTH_SOCK={guest_sock}"), ssh_agent=True
        )
        code, out = run_while(session, tmp_path, hub, lambda: None, request)
    finally:
        agent.kill()
        agent.wait()
    assert code == 0
    assert out.decode().rstrip().endswith("smol-test (ED25519)")
    assert not guest_sock.exists()  # the listener is gone with the run
