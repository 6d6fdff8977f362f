"""Benchmark: pack size, compressed vs raw, and what each costs at start (issue 14, §2).

One image, a busybox rootfs plus a copy of this host's /usr/lib/python3.X (a realistic,
compressible tree of ~50 MB), packed twice into an executable: `create --compress` (the
default: disk and saved VM zstd, decoded once into the cache) and `--no-compress` (raw,
read in place). Prints

- sizes: each tool's apparent size (what a download or a plain copy moves) and allocated
  size, against `tar | zstd -3` of the image tree;
- first run on a machine (empty cache: verify, materialize, decode) and steady state
  (warm cache), `./tool true`, medians of --rounds, compressed and raw alternating.

    python bench/bench_pack_size.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, cwd=cwd)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {res.returncode}: {res.stderr[-300:]!r}")
    return took


def tar_zstd_size(tree: Path) -> int:
    import zstandard

    tar = subprocess.run(["tar", "-C", str(tree), "-cf", "-", "."], capture_output=True)
    return len(zstandard.ZstdCompressor(level=3).compress(tar.stdout))


def mib(n: float) -> str:
    return f"{n / 2**20:6.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-size-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "build-cache")}
        src = work / "src"
        subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", src / "rootfs"], check=True)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        if (Path("/usr/lib") / stdlib.name).is_dir():  # the distribution's, without tests
            stdlib = Path("/usr/lib") / stdlib.name
        shutil.copytree(stdlib, src / "rootfs/usr/lib" / stdlib.name, symlinks=True)
        (src / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
            'init = ["cat /usr/lib/*/*.py > /dev/null 2>&1; true"]\n'
        )
        tools = {}
        for flag in ("--compress", "--no-compress"):
            tools[flag] = work / f"tool{flag}"
            cmd = [sys.executable, "-m", "smolpack", "create", "-q", flag]
            subprocess.run([*cmd, "-o", str(tools[flag]), str(src)], check=True, env=env)
        reference = tar_zstd_size(src / "rootfs")
        first: dict[str, list[float]] = {f: [] for f in tools}
        steady: dict[str, list[float]] = {f: [] for f in tools}
        for r in range(rounds):
            for flag, tool in tools.items():
                fresh = {**env, "SMOLPACK_CACHE_DIR": str(work / f"first-{r}{flag}")}
                first[flag].append(timed([str(tool), "true"], fresh))
                shutil.rmtree(work / f"first-{r}{flag}")
        warm = {**env, "SMOLPACK_CACHE_DIR": str(work / "warm")}
        for tool in tools.values():
            timed([str(tool), "true"], warm)
        for _ in range(rounds):
            for flag, tool in tools.items():
                steady[flag].append(timed([str(tool), "true"], warm))
        print(f"image tree `tar | zstd -3`: {mib(reference)}")
        for flag, tool in tools.items():
            st = tool.stat()
            ratio = st.st_size / reference
            print(f"{flag:<14} apparent {mib(st.st_size)} ({ratio:.2f}x the tar.zst)"
                  f"  allocated {mib(st.st_blocks * 512)}")  # fmt: skip
    print(f"./tool true, {rounds} rounds, medians, alternating")
    for flag in tools:
        f, s = statistics.median(first[flag]), statistics.median(steady[flag])
        print(f"{flag:<14} first run {f * 1000:7.0f} ms   steady {s * 1000:7.0f} ms")
    fc, fr = (statistics.median(first[f]) for f in tools)
    sc, sr = (statistics.median(steady[f]) for f in tools)
    print(f"compressed/raw: first run {fc / fr:.2f}, steady {sc / sr:.2f}")


if __name__ == "__main__":
    main()
