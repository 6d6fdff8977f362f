"""The real static agent (`agent --port-fd N`) driven by AgentSession over a socketpair.

No VM: every protocol behaviour of formats/agent-protocol.md except mounts, clock, RNG and
power off (spec section 8) runs here against the binary the packer ships.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smolpack.agent import protocol as p
from smolpack.agent.binary import agent_binary
from smolpack.agent.session import AgentSession, handshake
from smolpack.errors import AgentError, AgentTimeout, VmUnresponsive

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    # A lost EOF or EXIT makes run() wait forever; turn that into a failure with tracebacks.
    faulthandler.dump_traceback_later(30, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def agent_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return agent_binary(cache_dir=tmp_path_factory.mktemp("cache"))


@dataclass
class Agent:
    sock: socket.socket  # the host end of the channel
    proc: subprocess.Popen[bytes]  # the agent process
    session: AgentSession  # handshaken


def start_agent(agent_path: Path) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(agent_path), "--port-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    return host, proc


@pytest.fixture
def agent(agent_path: Path) -> Iterator[Agent]:
    host, proc = start_agent(agent_path)
    session = handshake(host, timeout_s=5)
    try:
        yield Agent(host, proc, session)
    finally:
        session.close()
        host.close()
        # End of file on the channel makes a --port-fd agent exit 0 (spec section 8).
        assert proc.wait(timeout=5) == 0


@dataclass
class Result:
    code: int  # exit code as the launcher reports it
    out: bytes  # everything written to stdout_fd
    err: bytes  # everything written to stderr_fd


def run(
    session: AgentSession, tmp_path: Path, request: p.RunRequest, stdin: bytes | None = None
) -> Result:
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    stdin_fd = None
    if stdin is not None:
        (tmp_path / "in").write_bytes(stdin)
        stdin_fd = os.open(tmp_path / "in", os.O_RDONLY)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            code = session.run(
                request, stdin_fd=stdin_fd, stdout_fd=out.fileno(), stderr_fd=err.fileno()
            )
        finally:
            if stdin_fd is not None:
                os.close(stdin_fd)
    return Result(code, out_path.read_bytes(), err_path.read_bytes())


def req(*argv: str, **kw: object) -> p.RunRequest:
    kw.setdefault("env", (PATH,))
    return p.RunRequest(argv=argv, **kw)  # type: ignore[arg-type]


def test_agent_version_in_ack(agent: Agent) -> None:
    assert agent.session.agent_version == "smolpack-agent 0.1.0"


def test_one_mib_of_random_bytes_round_trips(agent: Agent, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    res = run(agent.session, tmp_path, req("cat"), stdin=data)
    assert res.code == 0
    assert res.out == data
    assert res.err == b""


@pytest.mark.parametrize("status", [0, 1, 42, 255])
def test_exit_status_passes_through(agent: Agent, tmp_path: Path, status: int) -> None:
    assert run(agent.session, tmp_path, req("sh", "-c", f"exit {status}")).code == status


def test_death_by_signal_is_128_plus_signal(agent: Agent, tmp_path: Path) -> None:
    assert run(agent.session, tmp_path, req("sh", "-c", "kill -TERM $$")).code == 143


def test_env_is_exactly_the_given_one_and_cwd_is_honoured(agent: Agent, tmp_path: Path) -> None:
    env = (PATH, "FOO=bar baz", "EMPTY=")
    res = run(agent.session, tmp_path, req("env", env=env))
    assert res.out == b"PATH=/usr/local/bin:/usr/bin:/bin\nFOO=bar baz\nEMPTY=\n"
    res = run(agent.session, tmp_path, req("pwd", cwd=str(tmp_path)))
    assert res.out == f"{tmp_path}\n".encode()
    assert run(agent.session, tmp_path, req("pwd")).out == b"/\n"


def test_missing_cwd_is_126_with_message(agent: Agent, tmp_path: Path) -> None:
    res = run(agent.session, tmp_path, req("pwd", cwd="/no/such/dir"))
    assert (res.code, res.err) == (126, b"cd: /no/such/dir: No such file or directory\n")


def test_stderr_is_kept_apart_from_stdout(agent: Agent, tmp_path: Path) -> None:
    res = run(agent.session, tmp_path, req("sh", "-c", "echo out; echo err >&2; echo out2"))
    assert (res.code, res.out, res.err) == (0, b"out\nout2\n", b"err\n")


def test_command_not_found_is_127(agent: Agent, tmp_path: Path) -> None:
    res = run(agent.session, tmp_path, req("no-such-command-xyz", "arg"))
    assert (res.code, res.out, res.err) == (127, b"", b"no-such-command-xyz: command not found\n")
    res = run(agent.session, tmp_path, req("/no/such/file"))
    assert (res.code, res.err) == (127, b"/no/such/file: No such file or directory\n")


def test_not_executable_is_126(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("echo hi\n")  # mode 0644
    res = run(agent.session, tmp_path, req("tool", env=(f"PATH={tmp_path / 'bin'}",)))
    assert (res.code, res.err) == (126, b"tool: Permission denied\n")


def test_script_without_shebang_runs_with_sh(agent: Agent, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text('echo "args: $*"\n')
    script.chmod(0o755)
    res = run(agent.session, tmp_path, req(str(script), "a", "b"))
    assert (res.code, res.out) == (0, b"args: a b\n")


def test_signal_forwarded_from_a_signal_handler(agent: Agent, tmp_path: Path) -> None:
    # The launcher's shape: a SIGINT/SIGALRM handler calls forward_signal while run() blocks.
    old = signal.signal(signal.SIGALRM, lambda *_: agent.session.forward_signal(signal.SIGINT))
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        started = time.monotonic()
        res = run(agent.session, tmp_path, req("sleep", "30"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert res.code == 130
    assert time.monotonic() - started < 5


def test_the_program_starts_with_no_signal_ignored(agent_path: Path, tmp_path: Path) -> None:
    # exec keeps ignored signals ignored: an agent started from a background job (SIGINT,
    # SIGQUIT ignored) or ignoring SIGPIPE itself must not hand that on. Was: `sleep` kept
    # ignoring the forwarded SIGINT when the suite ran as a background job.
    def ignore() -> None:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)

    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(agent_path), "--port-fd", str(guest.fileno())], pass_fds=[guest.fileno()],
        preexec_fn=ignore,
    )  # fmt: skip
    guest.close()
    session = handshake(host, timeout_s=5)
    try:
        res = run(session, tmp_path, req("grep", "SigIgn", "/proc/self/status"))
    finally:
        session.close()
        host.close()
        assert proc.wait(timeout=5) == 0
    assert res.code == 0 and res.out.startswith(b"SigIgn:"), res
    # Signals 1-31 (bit n-1 is signal n). 32 and up are libc's: glibc refuses to set 32/33
    # and every program's libc installs its own handlers there.
    assert int(res.out.split()[1], 16) & 0x7FFF_FFFF == 0, res.out


def test_tty_mode_gets_a_pty_with_the_size_and_resize(agent: Agent, tmp_path: Path) -> None:
    old = signal.signal(signal.SIGALRM, lambda *_: agent.session.resize(50, 132))
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        res = run(
            agent.session,
            tmp_path,
            req(
                "sh", "-c", "tty; stty size; sleep 1; stty size", tty=True, tty_rows=33, tty_cols=77
            ),
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    lines = res.out.decode().split("\r\n")
    assert res.code == 0
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:] == ["33 77", "50 132", ""]
    assert res.err == b""


def test_tty_stdin_eof_sends_veof(agent: Agent, tmp_path: Path) -> None:
    res = run(agent.session, tmp_path, req("cat", tty=True), stdin=b"typed\n")
    assert res.code == 0
    assert b"typed" in res.out  # echoed by the line discipline and by cat


def test_sequential_runs_in_one_session(agent: Agent, tmp_path: Path) -> None:
    for word in ("one", "two", "three"):
        res = run(agent.session, tmp_path, req("echo", word))
        assert (res.code, res.out) == (0, f"{word}\n".encode())


def test_build_step_streams_output(agent: Agent, tmp_path: Path) -> None:
    r, w = os.pipe()
    code = agent.session.run_build_step(
        ["sh", "-c", "cat; echo built"], env=[PATH], stdout_fd=w, stderr_fd=w
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert (code, f.read()) == (0, b"built\n")  # stdin was empty


def test_grandchild_holding_stdout_does_not_hang_exit(agent: Agent, tmp_path: Path) -> None:
    started = time.monotonic()
    res = run(agent.session, tmp_path, req("sh", "-c", "sleep 3 & echo done"))
    assert (res.code, res.out) == (0, b"done\n")
    assert time.monotonic() - started < 2  # the 500 ms grace, not the 3 s sleep


def test_broken_stdout_sends_sigpipe_to_the_program(agent: Agent, tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        code = agent.session.run(req("yes"), stdin_fd=None, stdout_fd=w, stderr_fd=w)
    finally:
        os.close(w)
    assert code == 128 + signal.SIGPIPE


def test_repeated_hello_with_garbage_in_between_still_handshakes(
    agent_path: Path, tmp_path: Path
) -> None:
    host, proc = start_agent(agent_path)
    bad_crc = bytearray(p.Hello(nonce=b"x" * 16).encode())
    bad_crc[-1] ^= 0xFF
    noise = [
        os.urandom(100),
        p.encode_frame(p.RUN, b"\0" * 10),  # a RUN before HELLO: discarded in WAIT_HELLO
        bytes(bad_crc),
        p.Hello(nonce=b"y" * 16).encode()[:15],  # a HELLO cut short
        b"SPSPSP",
        p.Hello(nonce=b"z" * 16).encode(),  # acked, but not with our nonce
    ]
    host.sendall(b"".join(noise))
    with AgentSession(host) as session:
        ack = session.handshake(timeout_s=5)
        assert ack.agent_version == "smolpack-agent 0.1.0"
        assert run(session, tmp_path, req("echo", "ok")).out == b"ok\n"
    host.close()
    assert proc.wait(timeout=5) == 0


def test_prepare_snapshot_then_new_handshake(agent: Agent, tmp_path: Path) -> None:
    agent.session.prepare_snapshot(timeout_s=5)
    # The agent now discards everything but HELLO: this RUN must never execute.
    marker = tmp_path / "marker"
    agent.sock.sendall(req("touch", str(marker)).encode())
    first_nonce = agent.session.handshake(timeout_s=5).nonce
    assert agent.session.handshake(timeout_s=5).nonce != first_nonce  # fresh nonce each time
    assert run(agent.session, tmp_path, req("echo", "after")).out == b"after\n"
    assert not marker.exists()


def test_agent_errors_surface_as_agent_error(agent: Agent) -> None:
    frame = bytearray(req("true").encode())
    bad = p.encode_frame(p.RUN, bytes([8, 0, 0, 0]) + bytes(frame[p.HEADER_LEN + 4 :]))
    agent.sock.sendall(bad)
    with pytest.raises(AgentError, match=r"^guest agent: malformed RUN: reserved flag bits set$"):
        agent.session.prepare_snapshot(timeout_s=5)


def test_handshake_timeout_names_the_timeout() -> None:
    host, silent = socket.socketpair()
    with pytest.raises(
        AgentTimeout, match=r"^guest agent did not answer the handshake within 0.2 s$"
    ):
        handshake(host, timeout_s=0.2)
    host.close()
    silent.close()


def test_vanished_agent_is_agent_error(agent_path: Path, tmp_path: Path) -> None:
    host, proc = start_agent(agent_path)
    old = signal.signal(signal.SIGALRM, lambda *_: proc.kill())
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with AgentSession(host) as session:
            session.handshake(timeout_s=5)
            with pytest.raises(AgentError, match="^guest agent closed the channel$"):
                run(session, tmp_path, req("sleep", "2"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        host.close()
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_agent_binary_usage(agent_path: Path) -> None:
    res = subprocess.run([str(agent_path), "--version"], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, "smolpack-agent 0.1.0 (protocol 2)\n")
    res = subprocess.run([str(agent_path), "--port-fd", "99"], capture_output=True, text=True)
    assert (res.returncode, res.stderr) == (2, "smolpack-agent: bad --port-fd\n")


# -- liveness: a hung guest ends the run (the agent answers HELLO in any state) ----------


def test_a_silent_program_is_not_mistaken_for_a_hung_vm(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smolpack.agent.session as s

    monkeypatch.setattr(s, "IDLE_PING_S", 0.2)
    monkeypatch.setattr(s, "UNRESPONSIVE_S", 1.0)
    res = run(agent.session, tmp_path, req("sh", "-c", "sleep 2; echo done"))
    assert (res.code, res.out) == (0, b"done\n")  # ~10 pings answered on the way


def test_an_agent_that_stops_answering_ends_the_run(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smolpack.agent.session as s

    monkeypatch.setattr(s, "IDLE_PING_S", 0.2)
    monkeypatch.setattr(s, "UNRESPONSIVE_S", 0.5)
    threading_timer = threading.Timer(0.3, os.kill, (agent.proc.pid, signal.SIGSTOP))
    threading_timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(VmUnresponsive) as info:
            run(agent.session, tmp_path, req("sh", "-c", "echo started; sleep 30"))
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    assert time.monotonic() - t0 < 5
    assert str(info.value) == ("the VM stopped answering (no reply from the guest agent for 0.7 s)")
    assert info.value.exit_code == 121


def test_a_forwarded_signal_nobody_answers_ends_the_run(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smolpack.agent.session as s

    monkeypatch.setattr(s, "SIGNAL_ANSWER_S", 0.5)

    def hang_then_signal() -> None:
        os.kill(agent.proc.pid, signal.SIGSTOP)
        agent.session.forward_signal(signal.SIGTERM)

    timer = threading.Timer(0.5, hang_then_signal)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(VmUnresponsive, match=r"within 0.5 s of SIGTERM\)$"):
            run(agent.session, tmp_path, req("sh", "-c", "sleep 30"))
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    assert time.monotonic() - t0 < 5  # not the idle ping's 45 s


def test_a_version_1_agent_gets_a_version_1_handshake() -> None:
    """An agent from a pack built before channels refuses version 2; the host falls back."""
    host, peer = socket.socketpair()
    offers: list[int] = []

    def old_agent() -> None:
        reader = p.FrameReader()
        while True:
            data = peer.recv(4096)
            if not data:
                return
            for frame in reader.feed(data):
                hello = p.Hello.decode(frame.body)
                offers.append(hello.protocol_version)
                if hello.protocol_version != 1:
                    msg = f"unsupported protocol version {hello.protocol_version}"
                    peer.sendall(p.encode_error(msg))
                else:
                    ack = p.HelloAck(nonce=hello.nonce, protocol_version=1, agent_version="old")
                    peer.sendall(ack.encode())

    thread = threading.Thread(target=old_agent)
    thread.start()
    with handshake(host, timeout_s=5) as session:
        assert (session.protocol_version, session.agent_version) == (1, "old")
    host.close()
    thread.join()
    peer.close()
    assert offers[0] == 2 and offers[-1] == 1
