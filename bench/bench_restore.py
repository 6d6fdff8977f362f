"""Benchmark: restoring a saved VM vs cold-booting the same pack (QEMU engine).

Builds one pack from a busybox rootfs (examples/make-busybox-rootfs.sh), then
alternates `smolpack run PACK -- echo ready` with and without `--cold`, timing
each from process start to the first byte of output, and prints the medians and
their ratio. Goal (shared/design.md §5): restore at least 5x faster than boot.

    python bench/bench_restore.py [--rounds 5]
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


def first_byte_s(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0 or first != b"r":
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode})")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", work / "rootfs"], check=True)
        (work / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
            'init = ["echo warm > /root/warm"]\n'
        )
        pack = work / "bench.smolmachine"
        smolpack = [sys.executable, "-m", "smolpack"]
        subprocess.run([*smolpack, "create", "-q", "-o", pack, work], check=True, env=env)
        run = [*smolpack, "run"]
        restore, cold = [], []
        first_byte_s([*run, str(pack), "--", "echo ready"], env)  # warm the kernel cache
        for _ in range(rounds):
            restore.append(first_byte_s([*run, str(pack), "--", "echo ready"], env))
            cold.append(first_byte_s([*run, "--cold", str(pack), "--", "echo ready"], env))
    r, c = statistics.median(restore), statistics.median(cold)
    print(f"pack: {pack.name}, {rounds} rounds, alternating, first byte of output")
    print(f"restore  median {r * 1000:7.0f} ms  (min {min(restore) * 1000:.0f})")
    print(f"cold     median {c * 1000:7.0f} ms  (min {min(cold) * 1000:.0f})")
    print(f"cold / restore = {c / r:.1f}x")


if __name__ == "__main__":
    main()
