"""The nested-KVM lane (`make kvm-test`): real libkrun guests, in L1 machines booted by l1.py.

Not collected by the default test run (the file name does not match test_*.py); `make
kvm-test` names it. Each check boots one L1 (QEMU TCG with emulated AMD SVM; ~10 s to a
shell) and runs a command in it that sees this tree and its Python environment:

- the shared end-to-end tests under the krun engine (SMOLPACK_TEST_ENGINES=krun: every test
  that takes the `engine` fixture), which must all pass, none skipped;
- a stress loop of restores in a row, piped and not (bench/stress_restore.py);
- a krun state saved on one CPU model and run on another: the pack boots cold and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
L1 = [sys.executable, str(REPO / "tests" / "kvm_lane" / "l1.py")]
STUBS = Path(os.environ.get("SMOLPACK_STUB_DIR", REPO / "out" / "stubs"))


def in_l1(*command: str, cpu: str = "max", share: Path | None = None, timeout: float = 1500):
    """Run `command` in a fresh L1; stream its output here and return it (with its code)."""
    args = [*L1, "--cpu", cpu, "--timeout", str(timeout)]
    if share is not None:
        args += ["--share", str(share)]
    env = {**os.environ, "SMOLPACK_STUB_DIR": str(STUBS)}
    proc = subprocess.Popen(
        [*args, "--", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    with proc.stdout:
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            lines.append(line.decode(errors="replace"))
    return proc.wait(), "".join(lines)


def test_the_krun_e2e_tests_pass_in_l1() -> None:
    code, out = in_l1(
        "env", "SMOLPACK_TEST_ENGINES=krun",
        sys.executable, "-m", "pytest", "-q", "-m", "krun", "-p", "no:cacheprovider",
        "--durations=10", "tests/e2e",
    )  # fmt: skip
    assert code == 0, "the krun e2e tests failed in L1 (output above)"
    summary = [line for line in out.splitlines() if re.search(r"\d+ passed", line)]
    assert summary, "no pytest summary line"
    assert not re.search(r"skipped|failed|error", summary[-1]), summary[-1]


def test_dozens_of_restores_in_a_row_never_hang() -> None:
    code, out = in_l1(
        sys.executable, "bench/stress_restore.py", "--engine", "krun", "--rounds", "24",
        "--limit", "120",
    )  # fmt: skip
    assert code == 0, "a restore hung or gave the wrong output (output above)"
    assert "stress: 24 rounds ok, 0 failed" in out


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    return d


def test_a_state_from_another_cpu_model_boots_cold_and_says_why(shared: Path) -> None:
    pack = shared / "cpu.smolmachine"
    smolfile = 'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
    build = (
        f"set -e; d=$(mktemp -d); examples/make-busybox-rootfs.sh $d/rootfs >/dev/null;"
        f" printf '{smolfile}' > $d/Smolfile;"
        f" {sys.executable} -m smolpack create -q --state=krun -o {pack} $d"
    )
    code, _ = in_l1("sh", "-c", build, cpu="max", share=shared)
    assert code == 0 and pack.is_file()
    # EPYC has SVM (so L1 still has KVM) but far fewer features than `max`.
    run = f"{sys.executable} -m smolpack run --engine=krun {pack} -- 'echo ran; exit 5'"
    code, out = in_l1("sh", "-c", run, cpu="EPYC,+svm", share=shared)
    assert code == 5, out
    line = [x for x in out.splitlines() if x.startswith("smolpack: not restoring")]
    assert line, out
    assert line[0].startswith(
        "smolpack: not restoring krun-x86_64 (it was saved on a CPU with what this one lacks: "
    )
    assert line[0].endswith("; booting cold")
    assert "ran" in out.splitlines()
