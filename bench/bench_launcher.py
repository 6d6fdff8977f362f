"""Benchmark: where the launcher floor goes, `./tool --smol-version` (issue 14, §3).

A stub with our bootloader (smolpack/stub_bootloader.py) unpacks its runtime (libpython,
extension modules, base_library.zip) once into the cache, then at every start checks it and
runs PyInstaller's onefile child from there (fork, exec, wait), which loads that libpython,
unmarshals our modules and runs `main`. A stock PyInstaller stub unpacks into a fresh temp
dir at every start, runs the child, waits, then removes the files. This splits one
start into those phases with `strace -f --seccomp-bpf -e trace=execve,exit_group` (only
those two calls stop the process, so the tracing costs little): bootloader (exec → the
child's exec: unpack or check), child (→ its exit), after (→ the first process's exit:
waiting and cleanup). It sets them against `python3 -I -S -c pass` (a bare interpreter) and
`python3 -I -S -c 'import smolpack.launcher'` (interpreter + our imports, from .pyc
files), and times a first start too (an empty cache each round: the one-time unpack).
Medians of --rounds, alternating.

`--versus OTHER` adds another tool or stub (say, one built before a change, or with
SMOLPACK_STUB_BOOTLOADER=stock) to the same alternation, for an A/B in one run.

    python bench/bench_launcher.py [--rounds 9] [--tool PATH] [--versus OTHER]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(rb"^(\d+) +(\d+\.\d+) (execve|exit_group|\+\+\+ exited)")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def phases(tool: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """ms: bootloader (exec → child exec), child (→ its exit), after (→ first process exit)."""
    cmd = ["strace", "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,exit_group"]
    subprocess.run([*cmd, "-o", str(log), str(tool), "--smol-version"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    events = [m.groups() for x in log.read_bytes().splitlines() if (m := LINE.match(x))]
    execs = [(int(p), float(t)) for p, t, e in events if e == b"execve"]
    exits = {int(p): float(t) for p, t, e in events if e == b"+++ exited"}
    (first, t0), (child, t1) = execs[0], execs[1]
    return {
        "bootloader": (t1 - t0) * 1000,
        "child": (exits[child] - t1) * 1000,
        "after": (exits[first] - exits[child]) * 1000,
    }


def make_tool(work: Path, env: dict[str, str]) -> Path:
    src = work / "src"
    subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", src / "rootfs"], check=True)
    (src / "Smolfile").write_text('image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\n')
    tool = work / "tool"
    cmd = [sys.executable, "-m", "smolpack", "create", "-q", "-o", str(tool), str(src)]
    subprocess.run(cmd, check=True, env=env)
    return tool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tool", type=Path)
    parser.add_argument("--versus", type=Path, help="another tool or stub to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        tool = args.tool.resolve() if args.tool else make_tool(work, env)
        imports = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import smolpack.launcher"
        cmds = {
            "./tool --smol-version": [str(tool), "--smol-version"],
            "python3 -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"],
            "python3 -I -S + launcher imports": [sys.executable, "-I", "-S", "-c", imports],
        }
        if args.versus:
            cmds[f"{args.versus.name} --smol-version"] = [
                str(args.versus.resolve()),
                "--smol-version",
            ]
        envs = {name: env for name in cmds}
        first = "./tool --smol-version, first start"
        cmds[first] = cmds["./tool --smol-version"]
        fresh = iter(range(1_000_000))
        walls: dict[str, list[float]] = {k: [] for k in cmds}
        split: dict[str, list[float]] = {}

        def env_of(name: str) -> dict[str, str]:  # a first start gets an empty cache
            if name != first:
                return envs[name]
            return {**env, "SMOLPACK_CACHE_DIR": str(work / f"cache-{next(fresh)}")}

        for name, cmd in cmds.items():
            timed(cmd, env_of(name))
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                walls[name].append(timed(cmd, env_of(name)))
            for k, v in phases(tool, env, work / "strace.log").items():
                split.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in walls.items()}
    floor = med["python3 -I -S -c pass"]
    print(f"{args.rounds} rounds, medians, alternating (ms)")
    for name, ms in med.items():
        print(f"  {name:<38} {ms:7.1f}  {ms / floor:5.2f}x bare python")
    print("  ./tool --smol-version under strace, by phase:")
    for k, v in split.items():
        print(f"    {k:<8} {statistics.median(v):7.1f}")


if __name__ == "__main__":
    main()
