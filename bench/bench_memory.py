"""Benchmark: restore time against the size of the saved RAM, lazy vs eager (issue 14, §1).

Builds four packs from one busybox rootfs, all with 512 MiB of guest RAM: a small one
(init leaves almost nothing in RAM) and a big one (init leaves ~400 MB of non-zero data in
a tmpfs), each in the lazy layout (RAM a section of its own, mapped copy-on-write) and the
eager one (RAM inside QEMU's migration stream). Then runs `smolpack run --debug PACK --
true` --rounds times per pack, big and small alternating, and prints the medians of the
load stage (QEMU's -incoming until the guest runs) and of the whole restore (spawn + load
+ handshake, from the `smolpack: stages` line), of the program's
run (where lazily mapped pages fault in) and of the whole run, and the ratios big/small.

    python bench/bench_memory.py [--rounds 5]
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

FILL = (
    "mkdir -p /fill && mount -t tmpfs -o size=450m tmpfs /fill"
    " && yes 0123456789abcdef | head -c 400000000 > /fill/data"
)
BUILD = """
import sys
from pathlib import Path
from smolpack.build import build_payload
from smolpack.progress import Progress
from smolpack.smolfile import load_smolfile
config = load_smolfile(Path(sys.argv[1])).packed()
lazy = sys.argv[3] == "lazy"
# raw sections: the eager stream is read in place, as packs before issue 14 were
build_payload(config, Path(sys.argv[2]), progress=Progress(quiet=True), lazy_memory=lazy,
              compress=False)
"""


def build(src: Path, out: Path, layout: str, env: dict[str, str]) -> Path:
    subprocess.run([sys.executable, "-c", BUILD, str(src), str(out), layout], check=True, env=env)
    return out


def run(pack: Path, env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "smolpack", "run", "--debug", str(pack), "--", "true"]
    res = subprocess.run(cmd, env=env, capture_output=True)
    wall = (time.perf_counter() - start) * 1000
    if res.returncode != 0:
        raise SystemExit(f"bench: {pack.name} exited {res.returncode}: {res.stderr[-300:]!r}")
    lines = res.stderr.decode().splitlines()
    for x in lines:
        if "run files kept in" in x:
            subprocess.run(["rm", "-rf", x.split(" in ", 1)[1]], check=False)
    s = parse_line(next(x for x in lines if x.startswith(PREFIX)))
    return {
        "load": s["load"],
        "restore": s["spawn"] + s["load"] + s["handshake"],
        "program": s["program"],
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", work / "rootfs"], check=True)
        packs = {}
        for kind, init in (("small", "echo warm > /root/warm"), ("big", FILL)):
            src = work / kind
            src.mkdir()
            (src / "rootfs").symlink_to(work / "rootfs")
            (src / "Smolfile").write_text(
                'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 512\n'
                f"init = [{init!r}]\n".replace("'", '"')
            )
            for layout in ("lazy", "eager"):
                pack = build(src, work / f"{kind}-{layout}.smolmachine", layout, env)
                packs[kind, layout] = pack
                sizes[kind, layout] = pack.stat().st_blocks * 512
        for pack in packs.values():
            run(pack, env)  # first run: verify, materialize the RAM file
        for _ in range(rounds):
            for layout in ("lazy", "eager"):
                for kind in ("big", "small"):
                    results.setdefault((kind, layout), []).append(run(packs[kind, layout], env))
    print(f"{rounds} rounds, medians, big/small alternating; smolpack run --debug PACK -- true")
    for layout in ("lazy", "eager"):
        med = {kind: _medians(results[kind, layout]) for kind in ("big", "small")}
        for k in ("load", "restore", "program", "wall"):
            b, s = med["big"][k], med["small"][k]
            print(f"{layout:<6} {k:<8} big {b:7.1f} ms  small {s:7.1f} ms  big/small {b / s:.2f}")
        alloc = {kind: sizes[kind, layout] / 2**20 for kind in ("big", "small")}
        big, small = alloc["big"], alloc["small"]
        print(f"{layout:<6} pack on disk: big {big:.0f} MiB, small {small:.0f} MiB")


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


if __name__ == "__main__":
    main()
