"""Packed executables, run as a user would: `smolpack create -o tool`, then `./tool args`.

Each tool runs from a directory of its own with a cache that starts empty, under QEMU (TCG)
here. The PyInstaller onefile stub unpacks itself under TMPDIR at every start, so every run
points TMPDIR and XDG_RUNTIME_DIR at directories the test then expects to find empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import REPO, make_busybox_rootfs, qemu_pids, smolpack

pytestmark = pytest.mark.vm

TEXT = b"The cat and the hat.\nThe cat sat on the mat, and the cat slept.\n"
WORDFREQ_OUT = (
    b"lines 2\nwords 15\nchars 64\ntop 2:\n       3 cat\n       1 hat\n"
    b"report /tmp/wordfreq-report.txt sha256 "
)


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str]) -> dict[str, Path]:
    """`wordfreq` (the README's example) and `sh` (runs `sh -c ARGS`), built once."""
    root = tmp_path_factory.mktemp("tools")
    example = root / "wordfreq"
    shutil.copytree(
        REPO / "examples" / "wordfreq", example, ignore=shutil.ignore_patterns("rootfs")
    )
    make_busybox_rootfs(example / "rootfs", all_applets=True)
    shell = root / "shell"
    make_busybox_rootfs(shell / "rootfs")
    (shell / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        'init = ["echo warm > /root/warm"]\n'
    )
    built = {}
    for name, src in (("wordfreq", example), ("sh", shell)):
        out = root / "dist" / name
        res = smolpack("create", "-q", "-o", str(out), str(src), env=e2e_env)
        assert res.returncode == 0, res.stderr.decode()
        built[name] = out
    return built


@pytest.fixture
def user_dir(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Env of a user elsewhere: fresh cache, own TMPDIR and runtime dir (checked empty)."""
    for sub in ("cache", "tmp", "run"):
        (tmp_path / sub).mkdir()
    yield {
        **os.environ,
        "SMOLPACK_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path / "tmp"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    assert list((tmp_path / "tmp").iterdir()) == [], "the launcher left files in TMPDIR"
    assert list((tmp_path / "run").iterdir()) == [], "the launcher left run files behind"


def run_tool(
    tool: Path, *args: str, env: dict[str, str], stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(tool), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        cwd=cwd or tool.parent,
    )


def test_wordfreq_output_and_exit_code(
    tools: dict[str, Path], user_dir: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run_tool(tools["wordfreq"], "-n", "2", env=user_dir, stdin=TEXT, cwd=elsewhere)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.startswith(WORDFREQ_OUT)
    report = b"".join(res.stdout.splitlines(keepends=True)[:6])
    assert res.stdout.endswith(hashlib.sha256(report).hexdigest().encode() + b"\n")
    bad = run_tool(tools["wordfreq"], "-n", "lots", env=user_dir, cwd=elsewhere)
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
    res = run_tool(tool, "cat /root/warm", env=user_dir)
    assert res.stdout == b"warm\n"
    assert hashlib.sha256(tool.read_bytes()).hexdigest() == before
    assert smolpack("verify", str(tool)).returncode == 0


def test_smol_options(tools: dict[str, Path], user_dir: dict[str, str]) -> None:
    tool = tools["sh"]
    info = run_tool(tool, "--smol-info", env=user_dir)
    assert info.returncode == 0
    assert b"\nengine    qemu (tcg), restoring qemu-x86_64: " in info.stdout
    cold = run_tool(tool, "--smol-cold", "cat /root/warm; exit 3", env=user_dir)
    assert (cold.returncode, cold.stdout) == (3, b"warm\n")
    debug = run_tool(tool, "--smol-debug", "true", env=user_dir)
    assert debug.returncode == 0
    assert b"smolpack: qemu restore\n" in debug.stderr
    assert b"smolpack: stages launcher=" in debug.stderr
    kept = [line for line in debug.stderr.decode().splitlines() if "run files kept in" in line]
    shutil.rmtree(kept[0].split(" in ", 1)[1])
    krun = run_tool(tool, "--smol-engine=krun", "true", env=user_dir)
    if krun.returncode == 120:  # no hardware virtualization (our machines)
        assert krun.stderr.startswith(b"Error: hardware virtualization unavailable: ")
        assert krun.stderr.endswith(b"; use --smol-engine=qemu\n")


def test_flipped_byte_is_named_by_verify_and_refused_by_the_tool(
    tools: dict[str, Path], user_dir: dict[str, str], tmp_path: Path
) -> None:
    tool = tmp_path / "flipped"
    shutil.copy2(tools["sh"], tool)
    with open(tool, "r+b") as f:
        from smolpack.payload import open_payload

        with open_payload(tool) as payload:
            # stored zstd-compressed by default: flip a byte of the stored bytes
            entry = payload.sections["qemu-x86_64/migration"]
            at = payload.origin + entry.offset + entry.stored_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    verify = smolpack("verify", str(tool))
    assert verify.returncode == 114
    assert b"section 'qemu-x86_64/migration' digest mismatch" in verify.stderr
    res = run_tool(tool, "true", env=user_dir)
    assert res.returncode == 114
    assert res.stderr.startswith(f"Error: {tool}: section 'qemu-x86_64/migration' ".encode())
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
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    marker = user_dir["SMOLPACK_CACHE_DIR"]  # the kernel QEMU boots lives there
    before = qemu_pids(marker)
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
    while qemu_pids(marker) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_pids(marker) - before == set()


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


def test_qemu_killed_under_the_tool_is_one_error_line_and_leaves_nothing(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    marker = user_dir["XDG_RUNTIME_DIR"]  # this run's overlay lives there
    proc = start_sleeping_tool(tools, user_dir)
    (qemu,) = qemu_pids(marker)
    killed = time.monotonic()
    os.kill(qemu, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 121, err.decode()
    assert err == b"Error: the VM stopped unexpectedly (QEMU was killed by SIGKILL)\n"
    assert time.monotonic() - killed < 10
    assert qemu_pids(marker) == set()


def test_sigkill_of_the_tool_ends_its_run_and_leaves_nothing(
    tools: dict[str, Path], user_dir: dict[str, str]
) -> None:
    # SIGKILL hits the PyInstaller bootloader only; its Python child (the launcher proper)
    # must not run on without it, nor leave the bootloader's unpacked files behind.
    marker = user_dir["XDG_RUNTIME_DIR"]
    proc = start_sleeping_tool(tools, user_dir)
    assert qemu_pids(marker)
    proc.kill()
    proc.wait()
    dirs = [Path(user_dir["TMPDIR"]), Path(marker)]
    deadline = time.monotonic() + 15  # far less than the program's 30 s
    while qemu_pids(marker) or any(list(d.iterdir()) for d in dirs):
        assert time.monotonic() < deadline, [list(d.iterdir()) for d in dirs]
        time.sleep(0.1)
    proc.communicate()


def test_bare_payload_runs_through_smolpack_run(
    tmp_path: Path, e2e_env: dict[str, str], tools: dict[str, Path]
) -> None:
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


def test_the_launcher_bundles_the_run_path_only(tools: dict[str, Path]) -> None:
    # What the PyInstaller bootloader unpacks at every start (issue: "imports only the run
    # path ... no click, no lief, no build code"); metadata files would be unpacked too.
    from PyInstaller.archive.readers import CArchiveReader

    archive = CArchiveReader(str(tools["sh"]))
    assert not [name for name in archive.toc if ".dist-info" in name]
    modules = set(archive.open_embedded_archive("PYZ.pyz").toc)
    assert {"smolpack.runner", "smolpack.engine.qemu", "smolpack.engine.krun"} <= modules
    build_side = ("click", "lief", "smolpack.build", "smolpack.cli", "smolpack.image")
    assert not [m for m in modules if m.split(".")[0] in build_side or m.startswith(build_side)]
