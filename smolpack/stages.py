"""Where a run's time goes: the stage timings `--smol-debug` prints (run stage; issue 14, §4).

A run is split into consecutive stages, each ending where the next begins, so they add up
to the time from exec to exit:

    launcher   exec of the outermost process → `run_payload` (PyInstaller's bootloader,
               its extraction and second exec, interpreter init, imports)
    verify     open the pack, check the index, hash the sections on a file's first run
    plan       the manifest, host facts (hypervisor, QEMU, libkrun), engine choice
    prepare    files the engine needs: kernel and memory from the cache, the disk overlay
    spawn      start the engine's process up to its monitor answering
    load       load the saved state (QEMU `-incoming`) until the guest runs
    handshake  HELLO/READY with the agent
    program    RUN until the program's EXIT
    teardown   stop the VM, remove the run files

`launcher` comes from the kernel's start time of the process (the bootloader's for a
frozen stub), which it counts in clock ticks: 10 ms resolution (CLK_TCK 100). The rest
are `time.monotonic()` deltas. The line is `smolpack: stages k=v.vms ...` (ms), parsed by
bench/bench_stages.py.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import os
import sys
import time

STAGES = (
    "launcher", "verify", "plan", "prepare", "spawn", "load", "handshake", "program", "teardown",
)  # fmt: skip
PREFIX = "smolpack: stages "


class StageClock:
    """Consecutive stage durations in ms; `mark(stage)` ends `stage` now."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.ms: dict[str, float] = {}
        since = since_exec_s()
        if since is not None:
            self.ms["launcher"] = since * 1000

    def mark(self, stage: str) -> None:
        now = time.monotonic()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now

    def line(self) -> str:
        known = [s for s in STAGES if s in self.ms] + [s for s in self.ms if s not in STAGES]
        return PREFIX + " ".join(f"{s}={self.ms[s]:.1f}ms" for s in known)


def parse_line(line: str) -> dict[str, float]:
    """The stages of a `StageClock.line()` (for benchmarks and tests)."""
    if not line.startswith(PREFIX):
        raise ValueError(f"not a stages line: {line!r}")
    pairs = (item.partition("=") for item in line[len(PREFIX) :].split())
    return {k: float(v.removesuffix("ms")) for k, _, v in pairs}


def since_exec_s() -> float | None:
    """Seconds since the kernel started the launcher's outermost process; None off Linux."""
    # A PyInstaller onefile stub runs us as its bootloader's child: the user exec'd that one.
    pid = os.getppid() if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS") else 0
    try:
        with open(f"/proc/{pid or 'self'}/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22: starttime
        boot_now = time.clock_gettime(time.CLOCK_BOOTTIME)
        return max(0.0, boot_now - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
