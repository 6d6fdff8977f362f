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
import statistics
import subprocess
import sys

from _restore_vs_cold import ROOT, alternate, bench_pack, first_byte, run_cmd

sys.path.insert(0, str(ROOT))

from smolpack.stages import PREFIX, parse_line  # noqa: E402

TO_READY = ("verify", "plan", "prepare", "spawn", "load", "handshake")


def one_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first output byte, seconds from opening the pack to the agent ready)."""
    took, err = first_byte(cmd, env, stderr=True)
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
    # krun's state only: QEMU's build VM (TCG inside the emulated L1) does not boot there
    # (the guest kernel reboots; open), so QEMU restore is not compared in this lane.
    with bench_pack("bench-krun-", ["--state=krun"]) as (pack, env, t_create):
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
            "krun restore": run_cmd(pack, ["--debug", "--engine=krun"]),
            "krun cold boot": run_cmd(pack, ["--debug", "--engine=krun", "--cold"]),
        }
        # Warm the caches (kernel, memory image, base disk) with one run of each.
        runs = alternate(kinds, rounds, lambda cmd: one_run(cmd, env), warm=kinds)
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
