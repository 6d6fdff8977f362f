"""Benchmark: a shared host directory (FUSE over the agent port) vs the guest's own disk.

The same files are packed into the image (/data, so on the guest's virtio disk) and shared
from the host at /w; one run of the pack (busybox, QEMU engine) times, A/B:

- sequential read of a 256 MiB file: /w/big (A) vs /data/big (B);
- stat + read of 10,000 small files (1 KiB) with `find -exec cat {} +`: /w (A) vs /data (B).

The guest's page cache is dropped before each timed read; `cat` writes into a pipe (`wc -c`),
so every byte is really copied (busybox cat to /dev/null would splice nothing).

    python bench/bench_hostdir.py [--mib 256] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

SCRIPT = r"""
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
up() { read u _ < /proc/uptime; echo ${u%.*}${u#*.}; }  # centiseconds (busybox date has no %N)
t() { s=$(up); n=$("$@" 2>/dev/null | wc -c); e=$(up); echo $(( (e - s) * 10 )) $n; }
drop
echo big_shared $(t cat /w/big); drop
echo big_disk $(t cat /data/big); drop
echo small_shared $(t find /w/small -type f -exec cat {} +); drop
echo small_disk $(t find /data/small -type f -exec cat {} +)
"""


def main() -> None:
    from e2e_helpers import make_busybox_rootfs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=10000)
    opts = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    smolpack = [sys.executable, "-m", "smolpack"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_busybox_rootfs(root / "rootfs", all_applets=True)
        share = root / "rootfs" / "data"  # in the image, and shared as it is
        (share / "small").mkdir(parents=True)
        with open(share / "big", "wb") as f:
            for _ in range(opts.mib):
                f.write(os.urandom(1 << 20))
        for i in range(opts.files):
            (share / "small" / f"f{i:05d}").write_bytes(os.urandom(1024))
        (root / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 512\n'
        )
        pack = root / "bench.smolmachine"
        subprocess.run([*smolpack, "create", "-q", "-o", str(pack), str(root)], env=env, check=True)
        out = subprocess.run(
            [*smolpack, "run", "-v", f"{share}:/w", str(pack), "--", SCRIPT],
            capture_output=True, env=env, check=True,
        ).stdout.decode()  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    want = {"big": opts.mib << 20, "small": opts.files * 1024}
    for key, (_ms, count) in rows.items():
        if int(count) != want[key.split("_")[0]]:
            raise SystemExit(f"bench: {key} read {count} bytes: {out!r}")
    for what, label in (("big", f"sequential read {opts.mib} MiB"),
                        ("small", f"stat+read {opts.files} x 1 KiB")):  # fmt: skip
        a, b = int(rows[f"{what}_shared"][0]), int(rows[f"{what}_disk"][0])
        print(f"{label}: shared dir {a} ms, guest disk {b} ms, ratio {a / max(b, 1):.1f}")


if __name__ == "__main__":
    main()
