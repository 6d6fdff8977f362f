"""Benchmark: where the launcher floor goes, `./tool --smol-version` (issue 14, §3).

A PyInstaller onefile stub starts as a bootloader that unpacks its archive (libpython,
extension modules, base_library.zip) into a fresh temp dir, then runs itself again as a
child that loads that libpython, unmarshals our modules and runs `main`; the parent waits,
then removes the unpacked files. This splits one start into those phases with
`strace -f --seccomp-bpf -e trace=execve,exit_group` (only those two calls stop the
process, so the tracing costs little), and sets them against `python3 -I -S -c pass` (a
bare interpreter) and `python3 -I -S -c 'import smolpack.launcher'` (interpreter + our
imports, from .pyc files). Medians of --rounds, alternating.

It also runs the stub as a onefile *child* over a runtime unpacked beforehand (PyInstaller's
`_PYI_APPLICATION_HOME_DIR`, in a dir named like the bootloader's own `_MEI...`): what a
start would cost with a bootloader that kept its unpacked files across runs (keyed by
digest) and exec'd once, instead of unpacking, forking and cleaning up every time.

`--versus OTHER` adds another tool or stub (say, one built before a change) to the same
alternation, for an A/B in one run.

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
    """ms: unpack (exec → child exec), child (its exec → exit), cleanup (→ parent exit)."""
    cmd = ["strace", "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,exit_group"]
    subprocess.run([*cmd, "-o", str(log), str(tool), "--smol-version"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    events = [m.groups() for x in log.read_bytes().splitlines() if (m := LINE.match(x))]
    execs = [(int(p), float(t)) for p, t, e in events if e == b"execve"]
    exits = {int(p): float(t) for p, t, e in events if e == b"+++ exited"}
    (parent, t0), (child, t1) = execs[0], execs[1]
    return {
        "unpack": (t1 - t0) * 1000,
        "child": (exits[child] - t1) * 1000,
        "cleanup": (exits[parent] - exits[child]) * 1000,
    }


def unpack_runtime(tool: Path, work: Path) -> dict[str, str]:
    """The env that makes `tool` run as the child over a runtime unpacked here, once."""
    from PyInstaller.archive.readers import CArchiveReader  # type: ignore[import-untyped]

    home = work / "_MEI00000000reused"  # the bootloader checks the name's shape (18 chars)
    home.mkdir(mode=0o700)
    reader = CArchiveReader(str(tool))
    for name, (_pos, _clen, _ulen, _comp, typecode) in reader.toc.items():
        if typecode in "bxd":  # what the onefile parent unpacks
            dest = home / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(reader.extract(name))
            dest.chmod(0o755)
    return {
        "_PYI_APPLICATION_HOME_DIR": str(home),
        "_PYI_PARENT_PROCESS_LEVEL": "0",  # we are the child of a onefile parent
        "_PYI_ARCHIVE_FILE": str(tool),
        "LD_LIBRARY_PATH": str(home),  # as the parent sets it for its child
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
        reused = "./tool --smol-version, runtime reused"
        cmds[reused] = cmds["./tool --smol-version"]
        envs[reused] = {**env, **unpack_runtime(tool, work)}
        walls: dict[str, list[float]] = {k: [] for k in cmds}
        split: dict[str, list[float]] = {}
        for name, cmd in cmds.items():
            timed(cmd, envs[name])
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                walls[name].append(timed(cmd, envs[name]))
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
