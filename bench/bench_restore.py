"""Benchmark: restoring a saved VM vs cold-booting the same pack (QEMU engine).

Builds one pack from a busybox rootfs (examples/make-busybox-rootfs.sh), then
alternates `smolpack run PACK -- echo ready` with and without `--cold`, timing
each from process start to the first byte of output, and prints the medians and
their ratio. Goal (shared/design.md §5): restore at least 5x faster than boot.

    python bench/bench_restore.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

from _restore_vs_cold import alternate, bench_pack, first_byte, run_cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with bench_pack("bench-restore-") as (pack, env, _):
        kinds = {"restore": run_cmd(pack, []), "cold": run_cmd(pack, ["--cold"])}
        runs = alternate(
            kinds,
            rounds,
            lambda cmd: first_byte(cmd, env, stderr=False)[0],
            warm=["restore"],  # warm the kernel cache
        )
    restore, cold = runs["restore"], runs["cold"]
    r, c = statistics.median(restore), statistics.median(cold)
    print(f"pack: {pack.name}, {rounds} rounds, alternating, first byte of output")
    print(f"restore  median {r * 1000:7.0f} ms  (min {min(restore) * 1000:.0f})")
    print(f"cold     median {c * 1000:7.0f} ms  (min {min(cold) * 1000:.0f})")
    print(f"cold / restore = {c / r:.1f}x")


if __name__ == "__main__":
    main()
