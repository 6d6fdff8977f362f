"""Time image → tree → ext4 on a synthetic rootfs (numbers, not pass/fail).

    python bench/bench_image.py [--files 5000] [--mib 100]

Prints unpack time per compression and the disk build time, all from one run.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

from smolpack.disk import build_ext4
from smolpack.image import prepare_rootfs


def synthetic_tar(files: int, mib: int) -> bytes:
    buf = io.BytesIO()
    per_file = mib * (1 << 20) // files
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(files):
            # Half random (incompressible), half text: roughly a real /usr.
            data = os.urandom(per_file // 2) + b"line of text\n" * (per_file // 26)
            ti = tarfile.TarInfo(f"usr/lib/pkg{i % 97}/file{i}")
            ti.size = len(data)
            ti.mtime = 1_600_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    raw = synthetic_tar(args.files, args.mib)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = {
            "tar": raw,
            "tar.gz": gzip.compress(raw, compresslevel=6),
            "tar.zst": zstandard.ZstdCompressor(level=3).compress(raw),
        }
        for name, data in inputs.items():
            (root / f"in.{name}").write_bytes(data)
            t0 = time.perf_counter()
            prepare_rootfs(root / f"in.{name}", root / f"tree-{name}")
            dt = time.perf_counter() - t0
            print(f"unpack {name:8s} {len(data) >> 20:4d} MiB in: {dt:6.2f} s")
        t0 = time.perf_counter()
        build_ext4(root / "tree-tar", root / "base.img")
        dt = time.perf_counter() - t0
        size = (root / "base.img").stat().st_size >> 20
        print(f"build_ext4 ({args.files} files, {args.mib} MiB): {dt:6.2f} s, image {size} MiB")


if __name__ == "__main__":
    main()
