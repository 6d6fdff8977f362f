"""Real packs on unusual paths and files: `,` in every path QEMU sees, a pack QEMU must read
through the fd the launcher verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import make_busybox_rootfs, rewrite_pack, smolpack

from smolpack.host import find_qemu, qemu_version

pytestmark = pytest.mark.vm


def test_create_and_run_where_every_path_holds_a_comma(
    tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    # Was: `-chardev file,...,path=.../a,b=c/...: Invalid parameter 'b'`.
    root = tmp_path / "a,b=c"
    make_busybox_rootfs(root / "rootfs")
    (root / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
    )
    tmp = tmp_path / "tmp,x=y"  # run dirs (overlay, console) land here
    tmp.mkdir()
    env = {**e2e_env, "TMPDIR": str(tmp)}
    env.pop("XDG_RUNTIME_DIR", None)
    out = root / "out,z.smolmachine"
    res = smolpack("create", "-q", "-o", str(out), str(root), env=env)
    assert res.returncode == 0, res.stderr.decode()
    res = smolpack("run", str(out), "--", "echo ran; exit 7", env=env)
    assert (res.returncode, res.stdout, res.stderr) == (7, b"ran\n", b"")
    assert sorted(os.listdir(root)) == ["Smolfile", "out,z.smolmachine", "rootfs"]
    assert os.listdir(tmp) == []


def test_a_pack_deleted_after_it_was_opened_runs_from_the_verified_fd(
    tmp_path: Path, qemu_pack: Path, e2e_env: dict[str, str]
) -> None:
    # QEMU used to reopen the pack by path after verification; here the path is gone (a
    # path swapped after the check is the same hazard). It must read the open file.
    pack = tmp_path / "doomed.smolmachine"
    shutil.copy(qemu_pack, pack)
    fd = os.open(pack, os.O_RDONLY)
    try:
        pack.unlink()
        res = subprocess.run(
            [sys.executable, "-m", "smolpack", "run", f"/dev/fd/{fd}", "--", "echo from-fd"],
            capture_output=True,
            env=e2e_env,
            pass_fds=[fd],
            timeout=120,
        )
    finally:
        os.close(fd)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"from-fd\n", b"")


def test_runs_with_no_qemu_img_on_path(
    tmp_path: Path, qemu_pack: Path, e2e_env: dict[str, str]
) -> None:
    # Debian's qemu-system-x86 only recommends qemu-utils; a run used to die with
    # `internal error: FileNotFoundError` creating its overlay with qemu-img.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    (bin_dir / "qemu-system-x86_64").symlink_to(qemu)
    env = {**e2e_env, "PATH": str(bin_dir)}
    res = smolpack("run", str(qemu_pack), "--", "echo no-qemu-img", env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"no-qemu-img\n", b"")


# -- a restore that cannot work becomes a cold boot ---------------------------------------

QEMU_STATE = "qemu-x86_64"
STREAM = f"{QEMU_STATE}/migration"


def run_clean(pack: Path, env: dict[str, str], tmp: Path, script: str):  # type: ignore[no-untyped-def]
    """`smolpack run` with its run dirs in `tmp`, which must be empty afterwards."""
    run_env = {**env, "TMPDIR": str(tmp)}
    run_env.pop("XDG_RUNTIME_DIR", None)
    tmp.mkdir()
    res = smolpack("run", str(pack), "--", script, env=run_env)
    assert os.listdir(tmp) == [], "a run left files behind"
    return res


def test_state_recorded_by_another_qemu_version_boots_cold(
    tmp_path: Path, qemu_pack: Path, e2e_env: dict[str, str]
) -> None:
    def older_qemu(obj: dict[str, Any]) -> None:
        obj["states"][0]["recorded"]["qemu_version"] = "6.0.0"

    pack = rewrite_pack(qemu_pack, tmp_path / "old.smolmachine", manifest=older_qemu)
    # /root/init-was-here exists in the saved state's disk too: the cold boot runs the same
    # pack (its disk is the build's flattened one), just without the warm memory.
    res = run_clean(pack, e2e_env, tmp_path / "tmp", "cat /root/init-was-here; exit 3")
    here = qemu_version(find_qemu("x86_64"))
    assert (res.returncode, res.stdout) == (3, b"warmed-up\n")
    assert res.stderr.decode() == (
        f"smolpack: not restoring {QEMU_STATE} (it was saved by QEMU 6.0.0,"
        f" this host has {here}); booting cold\n"
    )
    # --debug's engine line names what runs: the cold boot, and why (was: "restoring")
    debug = smolpack("run", "--debug", str(pack), "--", "true", env=e2e_env)
    [line] = [x for x in debug.stderr.decode().splitlines() if x.startswith("smolpack: engine")]
    assert line.startswith(
        f"smolpack: engine qemu (tcg), cold boot (not restoring {QEMU_STATE}: it was saved by"
        f" QEMU 6.0.0, this host has {here}): "
    ), line


def test_a_migration_stream_qemu_refuses_boots_cold(
    tmp_path: Path, qemu_pack: Path, e2e_env: dict[str, str]
) -> None:
    def damage(data: bytearray) -> None:
        data[:8] = b"NOTQEVM!"  # resealed: the digests match, QEMU refuses the stream

    pack = rewrite_pack(qemu_pack, tmp_path / "bad.smolmachine", section=(STREAM, damage))
    res = run_clean(pack, e2e_env, tmp_path / "tmp", "echo still-runs")
    assert (res.returncode, res.stdout) == (0, b"still-runs\n")
    assert res.stderr.decode() == (
        f"smolpack: not restoring {QEMU_STATE} (restoring it failed: QEMU failed to start:"
        " qemu-system-x86_64: load of migration failed: Invalid argument); booting cold\n"
    )


# A damaged state section (digest mismatch) boots cold too, and a damaged disk is refused:
# tests/e2e/test_tool.py::test_flipped_byte_is_named_by_verify_and_refused_by_the_tool.


# -- a terminal run gets the user's TERM ---------------------------------------------------


def run_in_pty(args: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, bytes]:
    """Run `args` with stdin/stdout/stderr on a new pty; (exit code, everything printed)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once (nothing Python-level may run here)
        os.execve(args[0], args, env)
    out = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_a_terminal_run_gets_term_and_only_known_locales(
    test_pack: Path, e2e_env: dict[str, str]
) -> None:
    # Was: TERM= empty in the guest, so vi, less and top misbehaved.
    env = {**e2e_env, "TERM": "xterm-256color", "LANG": "en_US.UTF-8", "LC_ALL": "POSIX"}
    script = 'echo "T=$TERM L=${LANG-unset} A=$LC_ALL S=$FROM_SMOLFILE"'
    cmd = [sys.executable, "-m", "smolpack", "run", str(test_pack), "--", script]
    code, out = run_in_pty(cmd, env)
    # The busybox image has no locales: LANG stays out, POSIX always exists.
    assert (code, out) == (0, b"T=xterm-256color L=unset A=POSIX S=yes\r\n")
    # Not at a terminal: the pack's environment only.
    res = smolpack("run", str(test_pack), "--", script, env=env)
    assert (res.returncode, res.stdout) == (0, b"T= L=unset A= S=yes\n")
