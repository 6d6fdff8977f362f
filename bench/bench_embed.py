"""Benchmark: a packed executable must not start slower for a bigger payload.

Builds one PyInstaller onefile stub (prints "hi"), writes two payloads that
differ only in the size of their sparse disk section (64 MiB and 2 GiB),
embeds each (timing the embedding and its peak RSS in a fresh process), then
times `./tool` for both, interleaved A/B/A/B so machine noise hits both alike,
and prints the medians and their ratio. The goal (shared/design.md, section 5)
is a ratio of ~1.0: the payload sits before PyInstaller's archive, so the
bootloader's backwards scan for its cookie never reads it.

For contrast it also times the 64 MiB payload appended *after* the archive
(what `cat stub payload > tool` would give): that is the per-start cost the
placement avoids (~7 s/GiB here).

    python bench/bench_embed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from embed_helpers import build_pyinstaller_stub, env, write_payload  # noqa: E402

MiB = 1024 * 1024
SIZES = {"64MiB": 64 * MiB, "2GiB": 2048 * MiB}
# Peak RSS as VmHWM: getrusage's ru_maxrss would include the parent's peak,
# which Linux carries across fork + exec.
EMBED = """
import json, sys, time
from smolpack.embed import embed_payload
t0 = time.perf_counter()
r = embed_payload(sys.argv[1], sys.argv[2], sys.argv[3])
took = time.perf_counter() - t0
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"s": took, "size": r.size, "rss_mib": peak / 1024}))
"""


def run_once(tool: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([str(tool)], capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if res.returncode != 0 or res.stdout != "hi\n":
        raise SystemExit(f"{tool} failed: {res.returncode} {res.stdout!r} {res.stderr[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        stub = build_pyinstaller_stub(d / "stub")
        print(
            f"stub: {stub.stat().st_size / MiB:.1f} MiB, built in {time.perf_counter() - t0:.1f} s"
        )
        tools = {}
        for label, size in SIZES.items():
            payload = write_payload(d / f"{label}.smolmachine", disk_size=size, data=b"x" * MiB)
            tool = d / f"tool-{label}"
            res = subprocess.run(
                [sys.executable, "-c", EMBED, str(stub), str(payload), str(tool)],
                capture_output=True, text=True, env=env(), cwd=ROOT, check=True,
            )  # fmt: skip
            info = json.loads(res.stdout)
            print(
                f"embed {label:>5}: {info['s'] * 1000:7.1f} ms, peak RSS {info['rss_mib']:.0f} MiB,"
                f" output {info['size'] / MiB:.0f} MiB"
            )
            tools[label] = tool
        appended = d / "tool-appended"
        with open(appended, "wb") as f:
            for part in (stub, d / "64MiB.smolmachine"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f)
        appended.chmod(0o755)

        for tool in tools.values():  # warm the page cache
            run_once(tool)
        times: dict[str, list[float]] = {label: [] for label in tools}
        for _ in range(args.rounds):
            for label, tool in tools.items():
                times[label].append(run_once(tool))
        medians = {label: statistics.median(t) for label, t in times.items()}
        for label, m in medians.items():
            print(f"start {label:>5}: median {m * 1000:7.1f} ms over {args.rounds} runs")
        print(f"ratio 2GiB/64MiB: {medians['2GiB'] / medians['64MiB']:.3f}")
        run_once(appended)
        print(
            f"for contrast, 64 MiB appended after the archive: {run_once(appended) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
