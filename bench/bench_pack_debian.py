"""Benchmark: a Debian minbase + python3 pack vs `tar | zstd -3` of its tree, before vs after.

Issue 14, item 2: the pack of a realistic tree should be at most 1.4x the tar.zst of that
tree. One run builds the same Smolfile into an executable twice: with the smolpack of
`--before REV` (checked out with `git archive` into a temporary directory, its own stub
built from its own sources) and with this tree's, then prints each tool's size and ratio,
its sections (stored sizes), and `./tool pass` times: the first run on a machine (empty
cache: verify, decode, rebuild the RAM) and later runs (warm cache), medians of --rounds,
before and after alternating.

    debootstrap --variant=minbase --include=python3 bookworm /srv/deb http://deb.debian.org/debian
    python bench/bench_pack_debian.py --tree /srv/deb [--before 376e3b4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_pack_size import mib, tar_zstd_size, timed

ROOT = Path(__file__).resolve().parents[1]
SMOLFILE = """image = "./rootfs"
entrypoint = ["python3", "-c"]
cmd = ["import sys; print(sys.version)"]
memory = 256
init = ["python3 -c 'import asyncio, json, email.parser, http.client, sqlite3, unittest, \
decimal, xml.etree.ElementTree' && cat /usr/lib/python3*/*.py > /dev/null"]
"""


def sections(tool: Path, env: dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-m", "smolpack", "inspect", str(tool)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    return res.stdout[res.stdout.index("NAME") :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="a debootstrap'ed root tree")
    parser.add_argument("--before", default="376e3b4", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-debian-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        (src / "rootfs").symlink_to(args.tree.resolve())
        (src / "Smolfile").write_text(SMOLFILE)
        old = work / "before-src"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before],
                                 capture_output=True, check=True)  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        envs, tools = {}, {}
        for label, code in (("before", old), ("after", ROOT)):
            envs[label] = {**os.environ, "PYTHONPATH": str(code),
                           "SMOLPACK_CACHE_DIR": str(work / f"build-cache-{label}")}  # fmt: skip
            tools[label] = work / f"tool-{label}"
            cmd = [sys.executable, "-m", "smolpack", "create", "-q", "-o", str(tools[label])]
            # cwd = the code's tree: `python -m` puts the cwd before PYTHONPATH.
            took = timed([*cmd, str(src)], envs[label], cwd=code)
            print(f"{label}: create took {took:.1f} s", flush=True)
        reference = tar_zstd_size(args.tree)
        first: dict[str, list[float]] = {label: [] for label in tools}
        steady: dict[str, list[float]] = {label: [] for label in tools}
        for r in range(args.rounds):
            for label, tool in tools.items():
                fresh = {**envs[label], "SMOLPACK_CACHE_DIR": str(work / f"first-{r}-{label}")}
                first[label].append(timed([str(tool), "pass"], fresh))
                shutil.rmtree(work / f"first-{r}-{label}")
        for label, tool in tools.items():
            envs[label]["SMOLPACK_CACHE_DIR"] = str(work / f"warm-{label}")
            timed([str(tool), "pass"], envs[label])
        for _ in range(args.rounds):
            for label, tool in tools.items():
                steady[label].append(timed([str(tool), "pass"], envs[label]))
        print(f"\ntree {args.tree}: `tar | zstd -3` {mib(reference)}")
        for label, tool in tools.items():
            size = tool.stat().st_size
            print(f"\n{label} ({args.before if label == 'before' else 'this tree'}):"
                  f" {mib(size)}, {size / reference:.2f}x the tar.zst;"
                  f" ./tool pass: first run {statistics.median(first[label]):.2f} s,"
                  f" later runs {statistics.median(steady[label]):.2f} s"
                  f" (medians of {args.rounds})")  # fmt: skip
            print(sections(tool, envs["after"]), end="")


if __name__ == "__main__":
    main()
