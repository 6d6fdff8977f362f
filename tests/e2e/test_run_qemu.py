"""`smolpack run` against the real agent in a real VM, restored from a saved state (TCG)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import smolpack

pytestmark = pytest.mark.vm


def run(pack: Path, env: dict[str, str], *args: str, stdin: bytes = b""):  # type: ignore[no-untyped-def]
    return smolpack("run", str(pack), "--", *args, input=stdin, env=env)


def test_stdin_to_stdout_is_byte_exact_for_1_mib(test_pack: Path, e2e_env: dict[str, str]) -> None:
    data = os.urandom(1 << 20)
    res = run(test_pack, e2e_env, "cat", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == data


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_passes_through(test_pack: Path, e2e_env: dict[str, str], code: int) -> None:
    res = run(test_pack, e2e_env, f"exit {code}")
    assert res.returncode == code
    assert res.stdout == b""


def test_death_by_signal_is_128_plus_n(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "kill -TERM $$")
    assert res.returncode == 128 + 15


def test_env_and_cwd(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, 'echo "$FROM_SMOLFILE"; pwd')
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"yes\n/root\n"


def test_stderr_is_kept_apart_from_stdout(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "echo out; echo err >&2; echo out2")
    assert res.stdout == b"out\nout2\n"
    assert res.stderr == b"err\n"


def test_default_cmd_when_no_args(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = smolpack("run", str(test_pack), env=e2e_env)
    assert (res.returncode, res.stdout) == (0, b"default-cmd\n")


def test_file_written_by_init_step_is_there(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "cat /root/init-was-here")
    assert res.stdout == b"warmed-up\n"


def test_two_restores_get_fresh_entropy_and_the_current_clock(
    test_pack: Path, e2e_env: dict[str, str]
) -> None:
    script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
    outs = []
    for _ in range(2):
        res = run(test_pack, e2e_env, script)
        assert res.returncode == 0, res.stderr.decode()
        random_hex, guest_now = res.stdout.decode().split()
        assert abs(int(guest_now) - time.time()) <= 2
        outs.append(random_hex)
    assert len(outs[0]) == 64
    assert outs[0] != outs[1]


def test_writes_do_not_persist_between_runs(test_pack: Path, e2e_env: dict[str, str]) -> None:
    assert run(test_pack, e2e_env, "echo scribble > /root/scratch").returncode == 0
    res = run(test_pack, e2e_env, "test -e /root/scratch && echo persisted || echo fresh")
    assert res.stdout == b"fresh\n"


def test_cold_boot_runs_the_same_machine(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = smolpack(
        "run", "--cold", str(test_pack), "--", "cat /root/init-was-here; exit 7", env=e2e_env
    )
    assert (res.returncode, res.stdout) == (7, b"warmed-up\n")


def test_command_not_found_is_127(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "no-such-program")
    assert res.returncode == 127
    assert b"no-such-program: not found" in res.stderr


def test_run_leaves_no_temp_files(test_pack: Path, e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = {**e2e_env, "XDG_RUNTIME_DIR": str(tmp_path)}
    assert run(test_pack, env, "true").returncode == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cold", [False, True], ids=["restored", "cold-boot"])
def test_guest_timers_fire(test_pack: Path, e2e_env: dict[str, str], cold: bool) -> None:
    # The guest kernel needs a timer interrupt: without one (QEMU microvm with pic=off gave
    # the PIT no IRQ0 and the APIC timer failed its check) `sleep` never returned, and a
    # boot hung for good whenever the TSC calibration failed on a busy host.
    script = "sleep 0.3; echo slept"
    args = ["run", *(["--cold"] if cold else []), str(test_pack), "--", script]
    try:
        res = smolpack(*args, env=e2e_env, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("`sleep 0.3` in the guest did not return: no timer interrupt")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"slept\n"
