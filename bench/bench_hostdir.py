"""Benchmark: a shared host directory (FUSE over the agent port) vs the guest's own disk.

One run of one pack (busybox, QEMU engine) with the directory mounted at /w; inside it, A/B:

- sequential read of a 256 MiB file: from /w (A) vs a copy on the guest's disk (B);
- stat + read of 10,000 small files (1 KiB) with `find -exec cat {} +`: /w (A) vs disk (B).

The guest's page cache is dropped before each timed read, so B reads its virtio disk.

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
up() { read u _ < /proc/uptime; echo ${u%.*}${u#*.}; }  # centiseconds (busybox date has no %N)
t() { s=$(up); "$@" >/dev/null 2>&1; e=$(up); echo $(( (e - s) * 10 )); }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cp /w/big /root/big && cp -r /w/small /root/small && drop
echo big_shared $(t cat /w/big); drop
echo big_disk $(t cat /root/big); drop
echo small_shared $(t find /w/small -type f -exec cat {} +); drop
echo small_disk $(t find /root/small -type f -exec cat {} +)
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
        (root / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 1024\n'
        )
        pack = root / "bench.smolmachine"
        subprocess.run([*smolpack, "create", "-q", "-o", str(pack), str(root)], env=env, check=True)
        share = root / "share"
        (share / "small").mkdir(parents=True)
        with open(share / "big", "wb") as f:
            for _ in range(opts.mib):
                f.write(os.urandom(1 << 20))
        for i in range(opts.files):
            (share / "small" / f"f{i:05d}").write_bytes(os.urandom(1024))
        out = subprocess.run(
            [*smolpack, "run", "-v", f"{share}:/w", str(pack), "--", SCRIPT],
            capture_output=True, env=env, check=True,
        ).stdout.decode()  # fmt: skip
    ms = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    if len(ms) != 4:
        raise SystemExit(f"bench: unexpected output: {out!r}")
    for what, label in (("big", f"sequential read {opts.mib} MiB"),
                        ("small", f"stat+read {opts.files} x 1 KiB")):  # fmt: skip
        a, b = int(ms[f"{what}_shared"]), int(ms[f"{what}_disk"])
        print(f"{label}: shared dir {a} ms, guest disk {b} ms, ratio {a / max(b, 1):.1f}")


if __name__ == "__main__":
    main()
