"""The nested-KVM lane (`make kvm-test`): real libkrun guests, in L1 machines booted by l1.py.

Not collected by the default test run (the file name does not match test_*.py); `make
kvm-test` names it. L1 machines (QEMU TCG with emulated AMD SVM; ~10 s to a shell) run
commands that see this tree and its Python environment (without its .pth start-up hooks:
`l1.py --lean-python`). Two of them run side by side, one vCPU each (our CI hosts have two
cores; one vCPU also spares L1 the cross-CPU lockups seen under MTTCG on a loaded host):

- A: the shared end-to-end tests under the krun engine (SMOLPACK_TEST_ENGINES=krun: every
  test that takes the `engine` fixture) that run bare packs (one pack build);
- B: those that run packed tools (one more build), then a stress loop of restores in a row,
  piped and not (bench/stress_restore.py), whose pack it hands back to the host.

Every e2e test must pass, none skipped (one deselected, see E2E). Then a third L1, on another
CPU model, runs the stress pack (saved under `-cpu max`): it boots cold and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
L1 = [sys.executable, str(REPO / "tests" / "kvm_lane" / "l1.py")]
STUBS = Path(os.environ.get("SMOLPACK_STUB_DIR", REPO / "out" / "stubs"))
STRESS_ROUNDS = 24
# The 256 MiB shared-dir copy is the one krun test left out: in L1 any L2 guest dies or hangs
# after ~20-250 MB of port traffic, whichever VMM runs it (README, "nested-KVM lane").
E2E = (
    "env SMOLPACK_TEST_ENGINES=krun {py} -m pytest -v -m krun -p no:cacheprovider --durations=5"
    " --deselect 'tests/e2e/test_hostio.py::test_256_mib_copies_byte_exact_in_bounded_memory[krun]'"
)
SHARDS = {  # by the pack they build (a build in L1 takes minutes), balanced by one lane run
    "A": ["tests/e2e/test_run.py", "tests/e2e/test_run_signals.py",
          "tests/e2e/test_hardening.py", "tests/e2e/test_hostio.py"],
    "B": ["tests/e2e/test_tool.py"],
}  # fmt: skip


class L1Run:
    """One command in a fresh L1, in the background; its output is streamed here, each line
    prefixed with the run's name, and kept."""

    def __init__(self, name: str, script: str, *, cpu: str = "max", smp: int = 1,
                 share: Path | None = None, timeout: float = 1800) -> None:  # fmt: skip
        args = [*L1, "--cpu", cpu, "--smp", str(smp), "--timeout", str(timeout), "--lean-python"]
        if share is not None:
            args += ["--share", str(share)]
        env = {**os.environ, "SMOLPACK_STUB_DIR": str(STUBS)}
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*args, "--", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=REPO,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                sys.stdout.write(f"[{self.name}] {line}")
                sys.stdout.flush()

    def wait(self) -> tuple[int, str]:
        code = self.proc.wait()
        self.reader.join()
        return code, "".join(self.lines)


class Lane(NamedTuple):
    """What the shards' L1 machines left: their results and the stress pack."""

    shards: dict[str, tuple[int, str]]  # shard name -> (exit code, output) of its L1
    stress_tool: Path  # the stress pack (shard B), in the directory shared with the host


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Lane:
    """Shards A and B side by side; the stress pack lands in a directory shared with the host
    (exec'd from L1's own /tmp: a 9p share cannot exec it)."""
    shared = tmp_path_factory.mktemp("shared")
    py = sys.executable
    stress = (
        f"{py} bench/stress_restore.py --engine krun --rounds {STRESS_ROUNDS} --limit 120"
        f" --keep-pack /tmp/stress-tool; echo stress-exit=$?;"
        f" cp /tmp/stress-tool {shared}/stress-tool"
    )
    runs = {
        "A": L1Run("A", f"{E2E.format(py=py)} {' '.join(SHARDS['A'])}; echo e2e-exit=$?"),
        "B": L1Run(
            "B",
            f"{E2E.format(py=py)} {' '.join(SHARDS['B'])}; echo e2e-exit=$?; {stress}",
            share=shared,
        ),
    }
    return Lane(shards={n: r.wait() for n, r in runs.items()}, stress_tool=shared / "stress-tool")


def test_the_krun_e2e_tests_pass_in_l1(lane: Lane) -> None:
    for shard in SHARDS:
        code, out = lane.shards[shard]
        assert "e2e-exit=0" in out, f"the krun e2e tests failed in L1 {shard} (output above)"
        summary = [line for line in out.splitlines() if re.search(r"\d+ passed", line)]
        assert summary, f"no pytest summary line from L1 {shard}"
        assert not re.search(r"skipped|failed|error", summary[-1]), summary[-1]


def test_dozens_of_restores_in_a_row_never_hang(lane: Lane) -> None:
    _, out = lane.shards["B"]
    assert "stress-exit=0" in out, "a restore hung or gave the wrong output (output above)"
    assert f"stress: {STRESS_ROUNDS} rounds ok, 0 failed" in out


def test_a_state_from_another_cpu_model_boots_cold_and_says_why(lane: Lane) -> None:
    tool = lane.stress_tool
    assert tool.is_file(), "the stress pack was not handed back"
    # EPYC has SVM (so L1 still has KVM) but far fewer features than `max`.
    run = f"{sys.executable} -m smolpack run --engine=krun {tool} -- 'echo ran; exit 5'"
    code, out = L1Run("C", run, cpu="EPYC,+svm", smp=2, share=tool.parent).wait()
    assert code == 5, out
    line = [x for x in out.splitlines() if x.startswith("smolpack: not restoring")]
    assert line, out
    assert line[0].startswith(
        "smolpack: not restoring krun-x86_64 (it was saved on a CPU with what this one lacks: "
    )
    assert line[0].endswith("; booting cold")
    assert "ran" in out.splitlines()
