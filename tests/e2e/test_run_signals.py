"""`smolpack run` on every way a run can end early: signals, a crashing guest, a killed VMM,
under each engine (QEMU here; krun in the nested-KVM lane).

Each run gets a fresh, empty TMPDIR and XDG_RUNTIME_DIR (the run dir lives there), so the
tests can check that nothing is left behind, and finds its own VMM by that directory.
The rules under test are in formats/exit-codes.md ("Signals", "A VM that stops").
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import KILLED, REPO, vmm_pids

pytestmark = pytest.mark.vm

# Writing zeros into three tmpfs mounts (each may take half the RAM) runs a 256 MiB guest
# out of memory; with panic_on_oom the kernel panics instead of killing dd.
OOM_PANIC = (
    "echo 1 > /proc/sys/vm/panic_on_oom; echo started; "
    "for d in /tmp /dev/shm /run; do dd if=/dev/zero of=$d/fill bs=1M count=256 2>/dev/null; done; "
    "sleep 30"
)
# Under QEMU the agent is PID 1 and ignores every signal it has no handler for (SIGKILL
# included, as init), so crash it for real: overwrite its code with `hlt` (0xf4, a fault in
# user mode) through /proc/PID/mem. It faults the next time it wakes up, when dd's output
# arrives. Under krun libkrun's init is PID 1 and runs the agent (from a memfd) as a child.
KILL_AGENT = r"""
for p in /proc/[0-9]*; do
  case "$(readlink $p/exe)" in *agent*) pid=${p#/proc/};; esac
done
while read range perms rest; do [ "$perms" = r-xp ] && break; done < /proc/$pid/maps
start=$((0x${range%-*})); end=$((0x${range#*-}))
printf '\364' > /tmp/h
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do cat /tmp/h /tmp/h > /tmp/h2; cat /tmp/h2 > /tmp/h; done
dd if=/tmp/h of=/proc/$pid/mem bs=4096 seek=$((start / 4096)) count=$(((end - start) / 4096))
sleep 30
"""


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    run_dir: Path  # the run's XDG_RUNTIME_DIR: its VMM's command line or environment names it
    engine: str
    started: float
    out: bytes = b""  # the rest of stdout, after `finish`

    def readline(self, timeout_s: float = 120.0) -> bytes:
        """One line of the run's stdout (b"" if it ended first)."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout_s):
                pytest.fail(f"no output within {timeout_s:g} s")
        finally:
            sel.close()
        return self.proc.stdout.readline()

    def finish(self, timeout_s: float = 60.0) -> tuple[int, bytes, float]:
        """Exit code, stderr and seconds since the start, once the run ended."""
        try:
            self.out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail(f"the run did not end within {timeout_s:g} s")
        return self.proc.returncode, err, time.monotonic() - self.started

    def vmms(self) -> set[int]:
        return vmm_pids(self.engine, str(self.run_dir))


Start = Callable[..., Run]


@pytest.fixture
def start(
    test_pack: Path, engine_env: dict[str, str], engine: str, tmp_path: Path
) -> Iterator[Start]:
    """start(script, *flags) runs `smolpack run [flags] <pack> -- script` in the background;
    afterwards, no VMM of it may run and its temp dirs must be empty."""
    runs: list[Run] = []
    tmp, run = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    run.mkdir()
    env = {**engine_env, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(run)}

    def _start(script: str, *flags: str) -> Run:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smolpack", "run", *flags, str(test_pack), "--", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        runs.append(Run(proc, run, engine, time.monotonic()))
        return runs[-1]

    yield _start
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()
    # The launcher reaps its VMM before it exits: nothing may be left, not even briefly.
    assert vmm_pids(engine, str(run)) == set(), "the VMM outlived the run"
    assert list(run.iterdir()) == [], "run files left in XDG_RUNTIME_DIR"
    assert list(tmp.iterdir()) == [], "files left in TMPDIR"


def test_sigint_goes_to_the_program_which_exits_130(start: Start) -> None:
    run = start("echo started; sleep 30")
    assert run.readline() == b"started\n"
    os.kill(run.proc.pid, signal.SIGINT)
    code, err, took = run.finish()
    assert code == 130, err.decode()
    assert b"Traceback" not in err and b"Error" not in err
    assert took < 25  # not the 30 s sleep


def test_sigterm_goes_to_the_program_which_exits_143(start: Start) -> None:
    run = start("echo started; sleep 30")
    assert run.readline() == b"started\n"
    os.kill(run.proc.pid, signal.SIGTERM)
    code, err, took = run.finish()
    assert code == 143, err.decode()
    assert took < 25


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_second_signal_ends_a_program_that_ignores_the_first(start: Start, signo: int) -> None:
    name = signal.Signals(signo).name[3:]
    run = start(f"trap '' {name}; echo started; sleep 30; echo slept")
    assert run.readline() == b"started\n"
    os.kill(run.proc.pid, signo)
    time.sleep(1.0)  # longer than the SIGINT debounce: the next one is a new keypress
    assert run.proc.poll() is None, "the first signal must go to the program, not end the run"
    second = time.monotonic()
    os.kill(run.proc.pid, signo)
    code, err, _ = run.finish()
    assert code == 128 + signo
    assert err.endswith(b"Aborted.\n"), err
    assert time.monotonic() - second < 10


def test_a_signal_before_the_program_starts_aborts_the_boot(start: Start) -> None:
    run = start("echo started; sleep 30", "--cold")  # a cold boot: seconds before the program
    deadline = time.monotonic() + 60
    while not run.vmms():
        assert run.proc.poll() is None and time.monotonic() < deadline, "no VMM started"
        time.sleep(0.02)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, err, _ = run.finish()
    assert code == 143
    assert err.endswith(b"Aborted.\n"), err
    assert run.out == b""  # the program never ran


def test_guest_kernel_panic_is_one_error_line_121(start: Start, engine: str) -> None:
    run = start(OOM_PANIC)
    assert run.readline() == b"started\n"
    code, err, took = run.finish()
    assert code == 121, err.decode()
    if engine == "qemu":
        reason = b"guest kernel panic: Out of memory"
    else:  # libkrun's hvc0 does not get the panic line out before the VM ends (open)
        reason = b"the libkrun VM process exited with code "
    assert err.startswith(b"Error: the VM stopped unexpectedly (" + reason), err
    assert err.count(b"\n") == 1, err
    assert took < (25 if engine == "qemu" else 60)  # L2 under emulated SVM is slower


def test_agent_crash_is_one_error_line_121(start: Start, engine: str) -> None:
    run = start(KILL_AGENT)
    code, err, took = run.finish()
    assert code == 121, err.decode()
    if engine == "qemu":
        assert err == (
            b"Error: the VM stopped unexpectedly (the guest kernel rebooted:"
            b" the agent (PID 1) died or the program rebooted it)\n"
        )
    else:  # libkrun's init ends the VM with the agent; the VMM's exit names it
        assert err.startswith(b"Error: the VM stopped unexpectedly (the libkrun VM process ")
        assert err.count(b"\n") == 1, err
    assert took < 25


def test_vmm_killed_from_outside_is_one_error_line_121(start: Start, engine: str) -> None:
    run = start("echo started; sleep 30")
    assert run.readline() == b"started\n"
    (vmm,) = run.vmms()
    killed = time.monotonic()
    os.kill(vmm, signal.SIGKILL)
    code, err, _ = run.finish()
    assert code == 121, err.decode()
    assert err == b"Error: the VM stopped unexpectedly (" + KILLED[engine] + b")\n"
    assert time.monotonic() - killed < 10


def test_sigkill_takes_the_vmm_down_and_the_next_run_sweeps_the_files(start: Start) -> None:
    run = start("echo started; sleep 30")
    assert run.readline() == b"started\n"
    assert len(run.vmms()) == 1
    run.proc.kill()  # nothing can clean up after SIGKILL...
    code, _, _ = run.finish()
    assert code == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while run.vmms() and time.monotonic() < deadline:  # ...but the VMM dies with its parent
        time.sleep(0.05)
    assert run.vmms() == set()
    (left,) = run.run_dir.iterdir()
    assert (left / "overlay.qcow2").is_file()
    again = start("true")  # the next run removes what the killed one left
    code, err, _ = again.finish()
    assert code == 0, err.decode()
    assert not left.exists()
