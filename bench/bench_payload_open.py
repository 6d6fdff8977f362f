"""Benchmark: opening a payload must not cost more for a bigger payload.

Builds two payloads that differ only in the size of their sparse disk
section (64 MiB and 2 GiB), then times `open_payload(path)` + `.manifest()` +
`.close()` for each, interleaved A/B/A/B in one run so machine noise hits both
alike, and prints the medians and their ratio. The design goal
(shared/design.md, section 5) is a ratio of ~1.0: opening reads the header
and the index with bounded reads and hashes only the index.

    python bench/bench_payload_open.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smolpack.payload import (  # noqa: E402 - after the path fix above
    Manifest,
    PayloadWriter,
    SectionKind,
    StateRef,
    open_payload,
)

MiB = 1024 * 1024
SIZES = {"64MiB": 64 * MiB, "2GiB": 2048 * MiB}


def build(directory: Path, label: str, disk_size: int) -> Path:
    disk = directory / f"{label}.disk"
    with open(disk, "wb") as f:
        f.truncate(disk_size)  # sparse, with a little data at both ends
        f.write(b"superblock" * 100)
        f.seek(disk_size - 4096)
        f.write(b"tail" * 1024)
    manifest = Manifest(
        smolpack_version="bench",
        created="2026-11-22T00:00:00Z",
        guest_arch="x86_64",
        machine={"memory_mib": 256},
        states=(
            StateRef(
                name="qemu-x86_64",
                engine="qemu",
                host_arch="x86_64",
                host_os="linux",
                sections=("qemu-x86_64/migration",),
            ),
        ),
    )
    out = directory / f"{label}.smolmachine"
    with PayloadWriter(out) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
        w.add_bytes("kernel", SectionKind.KERNEL, os.urandom(4 * MiB))
        w.add_file("disk", SectionKind.DISK, disk)
        w.add_bytes("qemu-x86_64/migration", SectionKind.STATE, os.urandom(MiB))
    disk.unlink()
    return out


def open_once(path: Path) -> float:
    start = time.perf_counter()
    with open_payload(path) as payload:
        payload.manifest()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="opens per payload (>= 20)")
    args = parser.parse_args()
    rounds = max(20, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {label: build(Path(tmp), label, size) for label, size in SIZES.items()}
        for path in paths.values():  # warm the page cache and the import of json etc.
            open_once(path)
        times: dict[str, list[float]] = {label: [] for label in paths}
        for _ in range(rounds):
            for label, path in paths.items():
                times[label].append(open_once(path))
        medians = {label: statistics.median(t) for label, t in times.items()}
        for label, path in paths.items():
            print(
                f"open+manifest {label:>6} payload ({path.stat().st_size / MiB:8.1f} MiB file, "
                f"{path.stat().st_blocks * 512 / MiB:5.1f} MiB allocated): "
                f"median {medians[label] * 1e6:7.1f} us over {rounds} opens "
                f"(min {min(times[label]) * 1e6:.1f} us)"
            )
        ratio = medians["2GiB"] / medians["64MiB"]
        print(f"ratio 2GiB/64MiB: {ratio:.3f}")


if __name__ == "__main__":
    main()
