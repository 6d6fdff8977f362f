"""Benchmark: where the time of `./tool true` goes, stage by stage (issue 14, §4).

Packs the example-style busybox tool (or takes `--tool PATH`), then runs
`./tool --smol-debug true` --rounds times, alternating with a bare `python3 -I -S -c pass`
and `./tool --smol-version`, and prints the median of every stage of the launcher's
`smolpack: stages` line (smolpack/stages.py), the wall time measured from here, and what
the stages do not cover (the interpreter's exit, our process spawn). `launcher` has the
kernel's 10 ms clock-tick resolution.

    python bench/bench_stages.py [--rounds 7] [--tool PATH]
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

from smolpack.stages import PREFIX, STAGES, parse_line  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {res.returncode}: {res.stderr[-300:]!r}")
    return took, res.stderr


def make_tool(work: Path, env: dict[str, str]) -> Path:
    src = work / "src"
    subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", src / "rootfs"], check=True)
    (src / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        'init = ["echo warm > /root/warm"]\n'
    )
    tool = work / "tool"
    cmd = [sys.executable, "-m", "smolpack", "create", "-q", "-o", str(tool), str(src)]
    subprocess.run(cmd, check=True, env=env)
    return tool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tool", type=Path, help="an existing packed tool (default: pack one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        tool = args.tool.resolve() if args.tool else make_tool(work, env)
        run = [str(tool), "--smol-debug", "true"]
        timed(run, env)  # first run: verify + cache fill, not steady state
        stages: dict[str, list[float]] = {}
        walls, versions, floors = [], [], []
        for _ in range(args.rounds):
            wall, err = timed(run, env)
            walls.append(wall * 1000)
            line = next(x for x in err.decode().splitlines() if x.startswith(PREFIX))
            for k, v in parse_line(line).items():
                stages.setdefault(k, []).append(v)
            versions.append(timed([str(tool), "--smol-version"], env)[0] * 1000)
            floors.append(timed([sys.executable, "-I", "-S", "-c", "pass"], env)[0] * 1000)
            # run files are kept with --smol-debug; ours only
            for x in err.decode().splitlines():
                if "run files kept in" in x:
                    subprocess.run(["rm", "-rf", x.split(" in ", 1)[1]], check=False)
    med = {k: statistics.median(v) for k, v in stages.items()}
    wall = statistics.median(walls)
    print(f"{tool.name}: ./tool --smol-debug true, {args.rounds} rounds, medians (ms)")
    for stage in [s for s in STAGES if s in med]:
        print(f"  {stage:<10} {med[stage]:7.1f}  {med[stage] / wall:5.1%}")
    rest = wall - sum(med.values())
    print(f"  {'(rest)':<10} {rest:7.1f}  {rest / wall:5.1%}   exit, spawn from here")
    print(f"  {'wall':<10} {wall:7.1f}")
    v, f = statistics.median(versions), statistics.median(floors)
    print(f"./tool --smol-version {v:.1f} ms vs python3 -I -S -c pass {f:.1f} ms: {v / f:.2f}x")


if __name__ == "__main__":
    main()
