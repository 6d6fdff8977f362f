"""Benchmark: pulling an image from a local registry, cold vs from the blob cache.

Starts Debian's `docker-registry` on 127.0.0.1 (as tests/registry do), loads a
one-layer image with N MiB of incompressible data (skopeo), then times, A/B
alternating in one run: `pull_image` into an empty cache (every blob streamed,
hashed, published) against the same pull with the cache warm (one manifest
request, no blob traffic). Also times `push_pack` + `pull_pack` of a file of
the same size. Prints medians and MiB/s.

    python bench/bench_registry_pull.py [--mib 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "registry"))

from image_helpers import LAYER_GZIP, E, gz, make_tar, write_oci  # noqa: E402
from registry_helpers import Registry  # noqa: E402

from smolpack.progress import Progress  # noqa: E402
from smolpack.registry import Platform, pull_image, pull_pack, push_pack  # noqa: E402


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    quiet = Progress(quiet=True)
    amd64 = Platform(architecture="amd64")
    with tempfile.TemporaryDirectory(prefix="smolpack-bench-reg-") as tmp_name:
        tmp = Path(tmp_name)
        reg = Registry(tmp / "reg").start()
        try:
            data = os.urandom(args.mib << 20)
            layer = gz(make_tar([E("blob", data=data)]))
            write_oci(tmp / "oci", [(layer, LAYER_GZIP)], {"architecture": "amd64", "os": "linux"})
            ref = reg.push_layout(tmp / "oci", "bench/img:1")
            pack = tmp / "pack.smolmachine"
            shutil.copy(REPO / "formats/vectors/smolmachine/valid/sample.smolmachine", pack)
            with pack.open("ab") as f:  # bytes after the payload: still a .smolmachine
                f.write(data)
            cold, warm, push, pull = [], [], [], []
            for i in range(args.rounds):
                os.environ["SMOLPACK_CACHE_DIR"] = str(tmp / f"cache{i}")

                def pull_once() -> None:
                    pull_image(ref, platform=amd64, progress=quiet)

                cold.append(timed(pull_once))
                warm.append(timed(pull_once))
                target = f"{reg.host}/bench/pack:{i}"
                push.append(timed(lambda t=target: push_pack(pack, t, progress=quiet)))
                out = tmp / f"out{i}"
                pull.append(timed(lambda t=target, o=out: pull_pack(t, o, progress=quiet)))
        finally:
            reg.stop()
    size = len(layer) / 2**20
    for name, values in (("pull cold", cold), ("pull cached", warm), ("push pack", push),
                         ("pull pack", pull)):  # fmt: skip
        med = statistics.median(values)
        print(f"{name:12s} {size:7.1f} MiB  median {med * 1000:8.1f} ms  {size / med:8.1f} MiB/s")
    print(f"cold / cached: {statistics.median(cold) / statistics.median(warm):.1f}x")


if __name__ == "__main__":
    main()
