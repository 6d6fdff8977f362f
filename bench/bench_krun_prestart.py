"""Benchmark: what a krun launch costs before the guest runs, vs QEMU's restore setup.

Measurable on a host that cannot run a libkrun guest (ours: kvm_pvm):

- A, krun: a fresh process loads libkrunfw + libkrun and declares the bindings, then
  configures a restore context exactly as the launcher's VMM child does (disk overlay,
  root disk, consoles, agent port, snapshot dir, read-only memory fd), stopping right
  before `krun_start_enter`. Timed inside that process, from before the load.
- B, QEMU: `qemu-system-x86_64 ... -incoming fd:N` from spawn until QMP reports the
  `inmigrate` state (ready to read the saved state), with the same kernel and machine.

Medians of N alternating rounds, and their ratio, from one run:

    python bench/bench_krun_prestart.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KRUN_CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
from pathlib import Path
from smolpack.engine.krun import KrunSpec, configure
from smolpack.engine.krun_ffi import KrunLib
from smolpack.runtime_libs import find_runtime_libs
lib = KrunLib(find_runtime_libs())
t1 = time.perf_counter()
work = Path(sys.argv[1])
spec = KrunSpec(cpus=1, memory_mib=256, base_disk=work / "base.raw",
                overlay=work / f"overlay-{os.getpid()}.qcow2", console_log=work / "console.log",
                snapshot_dir=work, memory_file=work / "memory.bin")
a, b = os.pipe()
configure(lib, spec, a)
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "configure": t2 - t1, "total": t2 - t0}))
"""


def krun_once(work: Path) -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, "-c", KRUN_CHILD, str(work)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(res.stdout)


def qemu_once(work: Path, kernel: Path) -> float:
    from smolpack.engine.qemu import QemuMachine, QemuVm, RootDisk, create_overlay

    machine = QemuMachine(guest_arch="x86_64", cpus=1, memory_mib=256, kernel=kernel)
    run_dir = Path(tempfile.mkdtemp(dir=work))
    disk = RootDisk(path=work / "base.raw", size=8 << 20, overlay=run_dir / "overlay.qcow2")
    create_overlay(disk.overlay, disk)
    r, w = os.pipe()  # the state stream: nothing is ever written, QEMU waits in inmigrate
    t0 = time.perf_counter()
    vm = QemuVm(machine, disk, run_dir=run_dir, incoming_fd=r)
    try:
        while vm.qmp.execute("query-status").get("status") != "inmigrate":
            time.sleep(0.001)
        took = time.perf_counter() - t0
    finally:
        vm.close()
        os.close(r)
        os.close(w)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    from smolpack.kernel import extract_kernel, kernel_elf_path
    from smolpack.runtime_libs import find_runtime_libs

    kernel = kernel_elf_path(extract_kernel(find_runtime_libs()))
    with tempfile.TemporaryDirectory(prefix="bench-krun-") as tmp:
        work = Path(tmp)
        with open(work / "base.raw", "wb") as f:
            f.truncate(8 << 20)
        with open(work / "memory.bin", "wb") as f:
            f.truncate(256 << 20)
        krun_once(work)  # warm the page cache for both libraries
        qemu_once(work, kernel)
        krun, qemu = [], []
        for _ in range(rounds):
            krun.append(krun_once(work))
            qemu.append(qemu_once(work, kernel))
    k = statistics.median(x["total"] for x in krun)
    load = statistics.median(x["load"] for x in krun)
    conf = statistics.median(x["configure"] for x in krun)
    q = statistics.median(qemu)
    print(f"{rounds} rounds, alternating, medians")
    print(f"krun: load bindings + configure restore ctx  {k * 1000:7.1f} ms"
          f"  (load {load * 1000:.1f} ms, configure {conf * 1000:.1f} ms)")  # fmt: skip
    print(f"qemu: spawn -> incoming-ready (inmigrate)    {q * 1000:7.1f} ms")
    print(f"ratio qemu/krun: {q / k:.1f}x")


if __name__ == "__main__":
    main()
