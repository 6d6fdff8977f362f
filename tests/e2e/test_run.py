"""`smolpack run` against the real agent in a real VM restored from a saved state, under each
engine (`engine` fixture: QEMU here; krun in the nested-KVM lane, `make kvm-test`)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import smolpack, vmm_pids, vmm_rss_kib

pytestmark = pytest.mark.vm


def run(pack: Path, env: dict[str, str], *args: str, stdin: bytes = b"", debug: bool = False):  # type: ignore[no-untyped-def]
    flags = ["--debug"] if debug else []
    return smolpack("run", *flags, str(pack), "--", *args, input=stdin, env=env)


def test_the_pack_holds_a_state_for_the_engine(
    test_pack: Path, engine_env: dict[str, str], engine: str
) -> None:
    res = smolpack("inspect", "--json", str(test_pack), env=engine_env)
    assert res.returncode == 0
    assert f'"{engine}-x86_64/'.encode() in res.stdout


def test_restore_runs_with_the_init_step_effects(
    test_pack: Path, engine_env: dict[str, str], engine: str
) -> None:
    res = run(test_pack, engine_env, "cat /root/init-was-here; echo $FROM_SMOLFILE", debug=True)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"warmed-up\nyes\n"
    assert f"smolpack: {engine} restore ".encode() in res.stderr


def test_stdin_to_stdout_is_byte_exact_for_1_mib(
    test_pack: Path, engine_env: dict[str, str]
) -> None:
    data = os.urandom(1 << 20)
    res = run(test_pack, engine_env, "cat", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == data


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_passes_through(test_pack: Path, engine_env: dict[str, str], code: int) -> None:
    res = run(test_pack, engine_env, f"echo out; echo err >&2; exit {code}")
    assert (res.returncode, res.stdout, res.stderr) == (code, b"out\n", b"err\n")


def test_output_is_not_lost_when_the_guest_stops(
    test_pack: Path, engine_env: dict[str, str]
) -> None:
    res = run(test_pack, engine_env, "head -c 3000000 /dev/zero | tr '\\0' x; exit 7")
    assert res.returncode == 7
    assert res.stdout == b"x" * 3_000_000


def test_death_by_signal_is_128_plus_n(test_pack: Path, engine_env: dict[str, str]) -> None:
    res = run(test_pack, engine_env, "kill -TERM $$")
    assert res.returncode == 128 + 15


def test_env_and_cwd(test_pack: Path, engine_env: dict[str, str]) -> None:
    res = run(test_pack, engine_env, 'echo "$FROM_SMOLFILE"; pwd')
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"yes\n/root\n"


def test_run_builds_a_smolfile_once_then_restores(
    test_pack: Path, engine_env: dict[str, str], engine: str
) -> None:
    # `run --engine=E <Smolfile dir>` builds E's state only, into the cache, then restores it.
    first = smolpack("run", str(test_pack.parent), "--", "cat /root/init-was-here", env=engine_env)
    assert (first.returncode, first.stdout) == (0, b"warmed-up\n"), first.stderr.decode()
    assert (
        f"==> Saving the warmed-up {'krun ' if engine == 'krun' else ''}VM".encode() in first.stderr
    )
    again = smolpack("run", "--debug", str(test_pack.parent), "--", "exit 4", env=engine_env)
    assert again.returncode == 4
    assert b"==> " not in again.stderr  # nothing built the second time
    assert f"smolpack: {engine} restore ".encode() in again.stderr


def test_default_cmd_when_no_args(test_pack: Path, engine_env: dict[str, str]) -> None:
    res = smolpack("run", str(test_pack), env=engine_env)
    assert (res.returncode, res.stdout) == (0, b"default-cmd\n")


def test_two_restores_get_fresh_entropy_and_the_current_clock(
    test_pack: Path, engine_env: dict[str, str]
) -> None:
    script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
    outs = []
    for _ in range(2):
        before = time.time()
        res = run(test_pack, engine_env, script)
        after = time.time()
        assert res.returncode == 0, res.stderr.decode()
        random_hex, guest_now = res.stdout.decode().split()
        assert before - 1 <= int(guest_now) <= after + 1  # the host's now, not the saved one
        outs.append(random_hex)
    assert len(outs[0]) == 64
    assert outs[0] != outs[1]


def test_writes_do_not_persist_between_runs(test_pack: Path, engine_env: dict[str, str]) -> None:
    assert run(test_pack, engine_env, "echo scribble > /root/scratch").returncode == 0
    res = run(test_pack, engine_env, "test -e /root/scratch && echo persisted || echo fresh")
    assert res.stdout == b"fresh\n"


def test_cold_boot_runs_the_same_machine(test_pack: Path, engine_env: dict[str, str]) -> None:
    res = smolpack(
        "run", "--cold", str(test_pack), "--", "cat /root/init-was-here; exit 7", env=engine_env
    )
    assert (res.returncode, res.stdout) == (7, b"warmed-up\n"), res.stderr.decode()


def test_command_not_found_is_127(test_pack: Path, engine_env: dict[str, str]) -> None:
    res = run(test_pack, engine_env, "no-such-program")
    assert res.returncode == 127
    assert b"no-such-program: not found" in res.stderr


def test_run_leaves_no_temp_files(
    test_pack: Path, engine_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**engine_env, "XDG_RUNTIME_DIR": str(tmp_path)}
    assert run(test_pack, env, "true").returncode == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cold", [False, True], ids=["restored", "cold-boot"])
def test_guest_timers_fire(test_pack: Path, engine_env: dict[str, str], cold: bool) -> None:
    # The guest kernel needs a timer interrupt: without one (QEMU microvm with pic=off gave
    # the PIT no IRQ0 and the APIC timer failed its check) `sleep` never returned, and a
    # boot hung for good whenever the TSC calibration failed on a busy host.
    script = "sleep 0.3; echo slept"
    args = ["run", *(["--cold"] if cold else []), str(test_pack), "--", script]
    try:
        res = smolpack(*args, env=engine_env, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("`sleep 0.3` in the guest did not return: no timer interrupt")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"slept\n"


def test_guest_memory_faults_in_lazily(
    test_pack: Path, engine_env: dict[str, str], engine: str, tmp_path: Path
) -> None:
    """While a restored guest sleeps, the VMM's resident memory is far below its RAM."""
    if engine == "qemu":
        pytest.skip("QEMU reads the whole saved RAM on restore (issue 14: lazy memory)")
    env = {**engine_env, "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        ["python", "-m", "smolpack", "run", str(test_pack), "--", "echo started; sleep 5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"started\n"
        (vmm,) = vmm_pids(engine, str(tmp_path))
        rss_kib = vmm_rss_kib(vmm)
    finally:
        threading.Thread(target=proc.communicate, daemon=True).start()
        assert proc.wait(timeout=60) == 0
    assert rss_kib < 160 * 1024  # the guest has 256 MiB; a full copy would exceed it
