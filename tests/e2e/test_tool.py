"""Packed executables, run as a user would: `smolpack create -o tool`, then `./tool args`.

Each tool runs from a directory of its own with a cache that starts empty, under each engine
(`engine` fixture: QEMU (TCG) here, krun in the nested-KVM lane). The stub unpacks its
runtime into that cache (a stock PyInstaller onefile stub would unpack under TMPDIR at every
start), so every run points TMPDIR and XDG_RUNTIME_DIR at directories the test then expects
to find empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import KILLED, REPO, STATE, make_busybox_rootfs, smolpack, vmm_pids

pytestmark = pytest.mark.vm

TEXT = b"The cat and the hat.\nThe cat sat on the mat, and the cat slept.\n"
WORDFREQ_OUT = (
    b"lines 2\nwords 15\nchars 64\ntop 2:\n       3 cat\n       1 hat\n"
    b"report /tmp/wordfreq-report.txt sha256 "
)


def _create_tool(src: Path, out: Path, env: dict[str, str], *flags: str) -> Path:
    # Generous: under nested KVM on a loaded machine a build takes minutes.
    res = smolpack("create", "-q", *flags, "-o", str(out), str(src), env=env, timeout=1200)
    assert res.returncode == 0, res.stderr.decode()
    return out


@pytest.fixture(scope="session")
def tools(
    tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str], engine: str
) -> dict[str, Path]:
    """`sh` (runs `sh -c ARGS`), built once per engine with that engine's state only."""
    root = tmp_path_factory.mktemp(f"tools-{engine}")
    shell = root / "shell"
    make_busybox_rootfs(shell / "rootfs")
    (shell / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        'init = ["echo warm > /root/warm"]\n'
    )
    return {"sh": _create_tool(shell, root / "dist" / "sh", e2e_env, f"--state={engine}")}


@pytest.fixture(scope="session")
def wordfreq(tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str]) -> Path:
    """The README's example, built as `make demo` builds it (this host's states)."""
    root = tmp_path_factory.mktemp("wordfreq")
    example = root / "wordfreq"
    shutil.copytree(
        REPO / "examples" / "wordfreq", example, ignore=shutil.ignore_patterns("rootfs")
    )
    make_busybox_rootfs(example / "rootfs", all_applets=True)
    return _create_tool(example, root / "dist" / "wordfreq", e2e_env)


@pytest.fixture
def user_dir(tmp_path: Path, engine: str) -> Iterator[dict[str, str]]:
    """Env of a user elsewhere: fresh cache, own TMPDIR and runtime dir (checked empty)."""
    for sub in ("cache", "tmp", "run"):
        (tmp_path / sub).mkdir()
    yield {
        **os.environ,
        "SMOLPACK_ENGINE": engine,
        "SMOLPACK_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path / "tmp"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    assert list((tmp_path / "tmp").iterdir()) == [], "the launcher left files in TMPDIR"
    assert list((tmp_path / "run").iterdir()) == [], "the launcher left run files behind"


def run_tool(
    tool: Path, *args: str, env: dict[str, str], stdin: bytes = b"", cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    return subprocess.run(
        [str(tool), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
        cwd=cwd or tool.parent,
    )


def test_wordfreq_output_and_exit_code(
    wordfreq: Path, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    user_dir = {**e2e_env, "SMOLPACK_CACHE_DIR": str(tmp_path / "cache")}
    res = run_tool(wordfreq, "-n", "2", env=user_dir, stdin=TEXT, cwd=elsewhere)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.startswith(WORDFREQ_OUT)
    report = b"".join(res.stdout.splitlines(keepends=True)[:6])
    assert res.stdout.endswith(hashlib.sha256(report).hexdigest().encode() + b"\n")
    bad = run_tool(wordfreq, "-n", "lots", env=user_dir, cwd=elsewhere)
    assert (bad.returncode, bad.stdout) == (2, b"")
    assert bad.stderr == b"wordfreq: -n wants a number, got 'lots'\n"


def test_exit_codes_and_stderr_pass_through(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    res = run_tool(tools["sh"], "echo out; echo err >&2; cat /root/warm; exit 42", env=user_dir)
    assert (res.returncode, res.stdout, res.stderr) == (42, b"out\nwarm\n", b"err\n")


def test_eight_concurrent_runs(tools: dict[str, Path], user_dir: dict[str, str]) -> None:
    def one(i: int) -> subprocess.CompletedProcess[bytes]:
        return run_tool(
            tools["sh"],
            f"echo run-{i} > /root/mine; sleep 0.2; cat /root/mine; exit {i}",
            env=user_dir,
            timeout=600,  # a hang guard: eight at once take ~2 min on the lane's one vCPU
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, res in enumerate(results):
        assert (res.returncode, res.stdout) == (i, f"run-{i}\n".encode()), res.stderr.decode()


def test_runs_never_write_the_shipped_file(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    tool = tools["sh"]
    before = hashlib.sha256(tool.read_bytes()).hexdigest()
    assert run_tool(tool, "echo scribble > /root/warm; sync", env=user_dir).returncode == 0
    # krun runs from a copy of the base disk in the cache: that copy is never written either
    cached = sorted(Path(user_dir["SMOLPACK_CACHE_DIR"]).glob("disk/*"))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in cached]
    res = run_tool(tool, "cat /root/warm; echo again > /root/warm; sync", env=user_dir)
    assert res.stdout == b"warm\n"
    assert hashlib.sha256(tool.read_bytes()).hexdigest() == before
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in cached] == digests
    assert smolpack("verify", str(tool)).returncode == 0


def test_smol_options(tools: dict[str, Path], user_dir: dict[str, str], engine: str) -> None:
    tool = tools["sh"]
    info = run_tool(tool, "--smol-info", env=user_dir)
    assert info.returncode == 0
    label = "qemu (tcg)" if engine == "qemu" else "krun"
    assert f"\nengine    {label}, restoring {engine}-x86_64: ".encode() in info.stdout
    cold = run_tool(tool, "--smol-cold", "cat /root/warm; exit 3", env=user_dir)
    assert (cold.returncode, cold.stdout) == (3, b"warm\n")
    debug = run_tool(tool, "--smol-debug", "true", env=user_dir)
    assert debug.returncode == 0
    assert f"smolpack: {engine} restore\n".encode() in debug.stderr
    assert b"smolpack: stages launcher=" in debug.stderr
    kept = [line for line in debug.stderr.decode().splitlines() if "run files kept in" in line]
    shutil.rmtree(kept[0].split(" in ", 1)[1])
    krun = run_tool(tool, "--smol-engine=krun", "true", env=user_dir)
    if krun.returncode == 120:  # no hardware virtualization (our machines)
        assert krun.stderr.startswith(b"Error: hardware virtualization unavailable: ")
        assert krun.stderr.endswith(b"; use --smol-engine=qemu\n")


def test_flipped_byte_is_named_by_verify_and_refused_by_the_tool(
    tools: dict[str, Path], user_dir: dict[str, str], tmp_path: Path, engine: str
) -> None:
    from smolpack.payload import open_payload

    tool = tmp_path / "flipped"
    shutil.copy2(tools["sh"], tool)
    section = STATE[engine]
    with open_payload(tool) as payload:  # a stored byte, whatever the section's codec

        def middle(name: str) -> int:
            entry = payload.sections[name]
            return payload.origin + entry.offset + entry.stored_size // 2

        state_at, disk_at = middle(section), middle("disk")

    def flip(at: int) -> None:
        with open(tool, "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x01]))

    flip(state_at)
    verify = smolpack("verify", str(tool))
    assert verify.returncode == 114
    assert f"section '{section}' digest mismatch".encode() in verify.stderr
    # A damaged saved state is not needed to run: the tool boots cold and says why.
    res = run_tool(tool, "true", env=user_dir)
    assert res.returncode == 0
    assert res.stderr.startswith(
        f"smolpack: not restoring {engine}-x86_64 ({tool}: section '{section}' ".encode()
    )
    assert res.stderr.count(b"\n") == 1
    flip(disk_at)  # the disk is what a cold boot runs: refused
    res = run_tool(tool, "true", env=user_dir)
    assert res.returncode == 114
    assert res.stderr.startswith(f"Error: {tool}: section 'disk' ".encode())
    assert res.stderr.count(b"\n") == 1


def test_truncated_tool_fails_cleanly(
    tools: dict[str, Path], user_dir: dict[str, str], tmp_path: Path
) -> None:
    tool = tmp_path / "truncated"
    shutil.copy2(tools["sh"], tool)
    os.truncate(tool, tool.stat().st_size // 2)
    verify = smolpack("verify", str(tool))
    assert verify.returncode == 110
    assert verify.stderr.startswith(f"Error: {tool}: truncated".encode())
    res = run_tool(tool, "true", env=user_dir)
    assert res.returncode != 0
    assert b"Traceback" not in res.stderr


def test_ctrl_c_stops_the_tool_and_leaves_nothing(
    tools: dict[str, Path], user_dir: dict[str, str], engine: str
) -> None:
    marker = user_dir["SMOLPACK_CACHE_DIR"]  # the kernel QEMU boots lives there
    before = vmm_pids(engine, marker)
    proc = subprocess.Popen(
        [str(tools["sh"]), "echo started; sleep 30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=user_dir,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    # A terminal's Ctrl-C goes to the whole foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    deadline = time.monotonic() + 10
    while vmm_pids(engine, marker) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vmm_pids(engine, marker) - before == set()


def start_sleeping_tool(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The `sh` tool running a 30 s sleep, returned once the program has started."""
    proc = subprocess.Popen(
        [str(tools["sh"]), "echo started; sleep 30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=user_dir,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    return proc


def test_vmm_killed_under_the_tool_is_one_error_line_and_leaves_nothing(
    tools: dict[str, Path], user_dir: dict[str, str], engine: str
) -> None:
    marker = user_dir["XDG_RUNTIME_DIR"]  # this run's overlay lives there
    proc = start_sleeping_tool(tools, user_dir)
    (vmm,) = vmm_pids(engine, marker)
    killed = time.monotonic()
    os.kill(vmm, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 121, err.decode()
    assert err == b"Error: the VM stopped unexpectedly (" + KILLED[engine] + b")\n"
    assert time.monotonic() - killed < 10
    assert vmm_pids(engine, marker) == set()


def test_sigkill_of_the_tool_ends_its_run_and_leaves_nothing(
    tools: dict[str, Path], user_dir: dict[str, str], engine: str
) -> None:
    # SIGKILL hits the PyInstaller bootloader only; its Python child (the launcher proper)
    # must not run on without it, nor leave the bootloader's unpacked files behind.
    marker = user_dir["XDG_RUNTIME_DIR"]
    proc = start_sleeping_tool(tools, user_dir)
    assert vmm_pids(engine, marker)
    proc.kill()
    proc.wait()
    dirs = [Path(user_dir["TMPDIR"]), Path(marker)]
    deadline = time.monotonic() + 15  # far less than the program's 30 s
    while vmm_pids(engine, marker) or any(list(d.iterdir()) for d in dirs):
        assert time.monotonic() < deadline, [list(d.iterdir()) for d in dirs]
        time.sleep(0.1)
    proc.communicate()


def test_bare_payload_runs_through_smolpack_run(tmp_path: Path, e2e_env: dict[str, str]) -> None:
    # Not per engine: the shared tests in test_run.py run bare packs under each engine.
    src = tmp_path / "src"
    make_busybox_rootfs(src / "rootfs")
    (src / "Smolfile").write_text('image = "./rootfs"\nentrypoint = ["/bin/echo"]\nmemory = 128\n')
    out = tmp_path / "echo.smolmachine"
    res = smolpack("create", "-q", "-o", str(out), str(src), env=e2e_env)
    assert res.returncode == 0, res.stderr.decode()
    assert out.read_bytes()[:8] != b"\x7fELF\x02\x01\x01\x00"
    res = smolpack("run", str(out), "--", "hello", "world", env=e2e_env)
    assert (res.returncode, res.stdout) == (0, b"hello world\n")


def test_stub_for_another_host_is_refused_clearly(tmp_path: Path, e2e_env: dict[str, str]) -> None:
    src = tmp_path / "src"
    make_busybox_rootfs(src / "rootfs")
    (src / "Smolfile").write_text('image = "./rootfs"\nmemory = 128\n')
    out = tmp_path / "t"

    def create(target: str, stub_dir: Path) -> subprocess.CompletedProcess[bytes]:
        env = {**e2e_env, "SMOLPACK_STUB_DIR": str(stub_dir)}
        return smolpack("create", "-q", "-o", str(out), "--target", target, str(src), env=env)

    res = create("macos-arm64", tmp_path)
    assert res.returncode == 4
    assert res.stderr.startswith(b"Error: no launcher stub for macos-arm64 on this linux-")
    assert not out.exists()
    # This host's (x86_64) stub put where the aarch64 one belongs is refused too.
    host_stub = smolpack("stub", "build", "-q", env=e2e_env).stdout.decode().strip()
    slot = tmp_path / "stubs" / "linux-aarch64"
    slot.mkdir(parents=True)
    shutil.copy(host_stub, slot / "smolstub")
    res = create("linux-aarch64", tmp_path / "stubs")
    assert res.returncode != 0
    assert res.stderr.count(b"\n") == 1 and b"x86_64" in res.stderr, res.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_terminal_mode_gives_the_guest_a_tty_of_our_size(
    tools: dict[str, Path], user_dir: dict[str, str], tmp_path: Path
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    out = tmp_path / "tty.out"
    session = f"smolpack-{os.getpid()}"
    script = f"{tools['sh']} 'tty; stty size; exit 5'; echo \"rc=$?\" > {out}; sleep 60"
    env = {k: v for k, v in user_dir.items() if k != "TMUX"}
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "91", "-y", "33", script],
        env=env,
        check=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert out.read_text() == "rc=5\n", screen
    lines = [line.strip() for line in screen.splitlines() if line.strip()]
    assert lines[0].startswith("/dev/"), screen  # a real terminal in the guest
    assert lines[1] == "33 91", screen


def test_the_launcher_bundles_the_run_path_only(wordfreq: Path) -> None:
    # What the PyInstaller bootloader unpacks at every start (issue: "imports only the run
    # path ... no click, no lief, no build code"); metadata files would be unpacked too.
    from PyInstaller.archive.readers import CArchiveReader

    archive = CArchiveReader(str(wordfreq))  # the stub is the same whatever the engine
    assert not [name for name in archive.toc if ".dist-info" in name]
    modules = set(archive.open_embedded_archive("PYZ.pyz").toc)
    assert {"smolpack.runner", "smolpack.engine.qemu", "smolpack.engine.krun"} <= modules
    assert {"smolpack.agent.channels", "smolpack.host_resources"} <= modules
    build_side = ("click", "lief", "smolpack.build", "smolpack.cli", "smolpack.image",
                  "smolpack.engine.krun_build", "smolpack.engine.qemu_build",
                  "smolpack.engine.saving", "smolpack.smolfile")  # fmt: skip
    assert not [m for m in modules if m.split(".")[0] in build_side or m.startswith(build_side)]


def test_smol_port_and_ssh_agent_through_the_launcher(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    # Without a host agent to forward: one line, before any VM starts.
    env = {k: v for k, v in user_dir.items() if k != "SSH_AUTH_SOCK"}
    res = run_tool(tools["sh"], "--smol-ssh-agent", "true", env=env)
    assert (res.returncode, res.stderr) == (
        120,
        b"Error: --smol-ssh-agent: SSH_AUTH_SOCK is not set, so there is no ssh-agent to forward\n",
    )
    # A forward to a guest port nobody listens on: the client gets a clean EOF.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with subprocess.Popen(
        [str(tools["sh"]), f"--smol-port={port}:9", "echo up; cat >/dev/null; echo done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=user_dir,
    ) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
            c.sendall(b"x")
            assert c.recv(10) == b""
        proc.stdin.close()
        assert proc.stdout.read() == b"done\n"
        assert proc.wait(timeout=60) == 0
