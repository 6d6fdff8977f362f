"""Benchmark: packed executables (issue "One file users just run", §6). One run, ratios.

(a) stub floor: `./tool --smol-version` vs `python3 -I -S` importing the same modules
    (`smolpack.launcher` + the run path), both from a warm page cache;
(b) `./tool true` restoring the saved VM vs `./tool --smol-cold true` (first byte of output
    is not needed: `true` prints nothing, so this is exec → exit);
(c) start of a small tool (~130 MiB, mostly the sparse disk and the saved RAM) vs one whose
    image holds a 2 GiB sparse file (a ~2.6 GiB tool), measured as `./tool --smol-info`
    (opens and plans, no VM) and `./tool true`;
(d) sizes: the stub, the example tool (apparent and allocated), the bare payload.

Every figure is the median of --rounds runs (default 5), alternating A and B in one go so
machine noise hits both sides alike.

    python bench/bench_tool.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLPACK = [sys.executable, "-m", "smolpack"]


def timed(cmd: list[str], env: dict[str, str], expect: int = 0) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True)
    took = time.perf_counter() - start
    if res.returncode != expect:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {res.returncode}: {res.stderr[-300:]!r}")
    return took


def ab(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[float, float]:
    a(), b()  # warm caches (kernel file, verification marker, page cache)
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def create(src: Path, out: Path, env: dict[str, str]) -> Path:
    subprocess.run([*SMOLPACK, "create", "-q", "-o", str(out), str(src)], check=True, env=env)
    return out


def smolfile(dest: Path, big: int = 0) -> Path:
    subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", dest / "rootfs"], check=True)
    if big:
        with open(dest / "rootfs" / "big.bin", "wb") as f:
            f.truncate(big)  # sparse: grows the disk (and payload) without costing writes
    (dest / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        'init = ["echo warm > /root/warm"]\n'
    )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-tool-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        small = create(smolfile(work / "small"), work / "small-tool", env)
        big = create(smolfile(work / "big", big=2 << 30), work / "big-tool", env)
        payload = create(work / "small", work / "small.smolmachine", env)
        stub = subprocess.run(
            [*SMOLPACK, "stub", "build", "-q"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

        floor_code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); import smolpack.launcher, "
            "smolpack.runner, smolpack.launcher_info"
        )
        stub_s, floor_s = ab(
            lambda: timed([str(small), "--smol-version"], env),
            lambda: timed([sys.executable, "-I", "-S", "-c", floor_code], env),
            rounds,
        )
        restore_s, cold_s = ab(
            lambda: timed([str(small), "true"], env),
            lambda: timed([str(small), "--smol-cold", "true"], env),
            rounds,
        )
        info_small, info_big = ab(
            lambda: timed([str(small), "--smol-info"], env),
            lambda: timed([str(big), "--smol-info"], env),
            rounds,
        )
        run_small, run_big = ab(
            lambda: timed([str(small), "true"], env),
            lambda: timed([str(big), "true"], env),
            rounds,
        )
        sizes = {
            "stub": os.stat(stub).st_size,
            "tool": small.stat().st_size,
            "tool allocated": small.stat().st_blocks * 512,
            "payload": payload.stat().st_size,
            "big tool": big.stat().st_size,
        }
    ms = 1000
    print(f"{rounds} rounds each, medians, A/B alternating in one run")
    print(f"(a) stub --smol-version   {stub_s * ms:7.0f} ms   python -I -S same imports "
          f"{floor_s * ms:6.0f} ms   ratio {stub_s / floor_s:.2f}")  # fmt: skip
    print(f"(b) ./tool true restore   {restore_s * ms:7.0f} ms   --smol-cold "
          f"{cold_s * ms:6.0f} ms   cold/restore {cold_s / restore_s:.1f}x")  # fmt: skip
    a, b = mib(sizes["tool"]), mib(sizes["big tool"])
    print(f"(c) --smol-info  {a} tool {info_small * ms:5.0f} ms   {b} tool "
          f"{info_big * ms:5.0f} ms   ratio {info_big / info_small:.2f}")  # fmt: skip
    print(f"    ./tool true  {a} tool {run_small * ms:5.0f} ms   {b} tool "
          f"{run_big * ms:5.0f} ms   ratio {run_big / run_small:.2f}")  # fmt: skip
    print("(d) " + ", ".join(f"{k} {mib(v)}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
