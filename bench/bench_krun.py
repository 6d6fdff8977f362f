"""Benchmark, in the nested-KVM lane: krun restore vs krun cold boot of the same pack
(`make kvm-bench` runs it inside an L1 machine). QEMU restore is not compared there: QEMU's
build VM (TCG inside the emulated L1) does not boot in L1 (the guest kernel reboots; open).

Builds one pack with the krun state (`create --state=krun`), then alternates the runs,
each `smolpack run --debug PACK -- echo ready`, and reads two times per run: the wall time
to the first byte of output (Python start included) and, from the `--smol-debug` stages
line, the time from opening the pack to the agent's answer (verify + plan + prepare +
spawn + load + handshake: what restoring or booting costs, without Python's start). Prints
medians and ratios. L1 is itself emulated (QEMU TCG), so the absolute times say nothing
about real hardware; the ratios are what to read.

    python bench/bench_krun.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smolpack.stages import PREFIX, parse_line  # noqa: E402

TO_READY = ("verify", "plan", "prepare", "spawn", "load", "handshake")


def one_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first output byte, seconds from opening the pack to the agent ready)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - start
    proc.stdout.read()
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or first != b"r":
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode}): {err}")
    lines = [x for x in err.splitlines() if x.startswith(PREFIX)]
    if not lines:
        raise SystemExit(f"bench: no stages line in: {err}")
    stages = parse_line(lines[-1])
    for line in err.splitlines():
        if "run files kept in" in line:
            subprocess.run(["rm", "-rf", line.split(" in ", 1)[1]])
    return took, sum(stages.get(s, 0.0) for s in TO_READY) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-krun-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", work / "rootfs"], check=True)
        (work / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
            'init = ["echo warm > /root/warm"]\n'
        )
        pack = work / "bench.smolmachine"
        smolpack = [sys.executable, "-m", "smolpack"]
        t_create = time.perf_counter()
        # krun's state only: QEMU's build VM (TCG inside the emulated L1) does not boot there
        # (the guest kernel reboots; open), so QEMU restore is not compared in this lane.
        create = [*smolpack, "create", "-q", "--state=krun", "-o", pack, work]
        subprocess.run(create, check=True, env=env)
        t_create = time.perf_counter() - t_create
        from smolpack.engine.krun_state import MemoryMap
        from smolpack.payload import open_payload

        with open_payload(pack) as p:
            data = p.sections["krun-x86_64/memory.data"]
            mmap = MemoryMap.decode(
                p.read_section("krun-x86_64/memory.map"), data_size=data.raw_size, label="bench"
            )
        print(
            f"create (krun state) {t_create:.1f} s; pack {pack.stat().st_size / 2**20:.1f} MiB;"
            f" krun memory image {mmap.size / 2**20:.0f} MiB of which stored"
            f" {data.stored_size / 2**20:.1f} MiB in {len(mmap.extents)} extents"
        )
        kinds = {
            "krun restore": ["--engine=krun"],
            "krun cold boot": ["--engine=krun", "--cold"],
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for flags in kinds.values():  # warm the caches (kernel, memory image, base disk)
            one_run([*smolpack, "run", "--debug", *flags, str(pack), "--", "echo ready"], env)
        for _ in range(rounds):
            for kind, flags in kinds.items():
                cmd = [*smolpack, "run", "--debug", *flags, str(pack), "--", "echo ready"]
                runs[kind].append(one_run(cmd, env))
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
           for k, v in runs.items()}  # fmt: skip
    print(f"{rounds} rounds, alternating, inside L1 (QEMU under TCG there, krun under KVM)")
    for kind, (wall, engine) in med.items():
        print(
            f"{kind:15s} first byte {wall * 1000:7.0f} ms   to agent ready {engine * 1000:7.0f} ms"
        )
    for a, b in (("krun cold boot", "krun restore"),):
        print(f"{b} vs {a}: {med[a][0] / med[b][0]:.1f}x faster to first byte,"
              f" {med[a][1] / med[b][1]:.1f}x to the agent's answer")  # fmt: skip


if __name__ == "__main__":
    main()
