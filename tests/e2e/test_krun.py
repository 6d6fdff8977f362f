"""The krun engine end to end: pack, restore, run, exit code, lazy memory (marker `krun`).

These need a host where a libkrun guest runs: Linux with KVM (vmx/svm, not kvm_pvm,
/dev/kvm read-write) or macOS with Hypervisor.framework. They skip elsewhere, with the
reason `smolpack doctor` gives; README "Testing the krun engine" says how to run them.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import smolpack

from smolpack.host import hypervisor_status

HV = hypervisor_status()
pytestmark = [
    pytest.mark.krun,
    pytest.mark.vm,
    pytest.mark.skipif(not HV.usable, reason=f"no libkrun guest here: {HV.reason}"),
]


def run(pack: Path, env: dict[str, str], *args: str, stdin: bytes = b""):  # type: ignore[no-untyped-def]
    return smolpack("run", "--engine=krun", "--debug", str(pack), "--", *args, input=stdin, env=env)


def test_the_pack_holds_a_krun_state_for_this_host(
    test_pack: Path, e2e_env: dict[str, str]
) -> None:
    res = smolpack("inspect", "--json", str(test_pack), env=e2e_env)
    assert res.returncode == 0
    assert b'"krun-' in res.stdout and b"/memory.bin" in res.stdout


def test_restore_runs_with_the_init_step_effects(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "cat /root/init-was-here; echo $FROM_SMOLFILE")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"warmed-up\nyes\n"
    assert b"smolpack: krun restore" in res.stderr


@pytest.mark.parametrize("code", [0, 3, 42, 255])
def test_exit_code_is_the_process_exit_code(
    test_pack: Path, e2e_env: dict[str, str], code: int
) -> None:
    res = run(test_pack, e2e_env, f"echo out; echo err >&2; exit {code}")
    assert res.returncode == code
    assert res.stdout == b"out\n"
    assert res.stderr.startswith(b"err\n")


def test_output_is_not_lost_when_the_guest_stops(test_pack: Path, e2e_env: dict[str, str]) -> None:
    res = run(test_pack, e2e_env, "head -c 3000000 /dev/zero | tr '\\0' x; exit 7")
    assert res.returncode == 7
    assert res.stdout == b"x" * 3_000_000


def test_guest_memory_faults_in_lazily(test_pack: Path, e2e_env: dict[str, str]) -> None:
    """While a restored guest sleeps, the VMM's resident memory is far below its RAM."""
    proc = subprocess.Popen(
        ["python", "-m", "smolpack", "run", "--engine=krun", str(test_pack), "--", "sleep 3"],
        env=e2e_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    rss_kib = []
    for child in children:
        text = Path(f"/proc/{child}/status").read_text()
        rss_kib.append(int(re.search(r"VmRSS:\s+(\d+)", text).group(1)))  # type: ignore[union-attr]
    threading.Thread(target=proc.communicate, daemon=True).start()
    assert proc.wait(timeout=60) == 0
    assert rss_kib, "no VMM child process found"
    assert max(rss_kib) < 200 * 1024  # the guest has 256 MiB; a full copy would exceed it
