"""Stress: restore one pack many times in a row, piped and not, and count runs that hang.

Not run by the unit suite; the nested-KVM lane runs it under krun (`make kvm-test`). It
packs one tool (`create -o tool`, an executable), then each round runs it with a time limit,
alternating `./tool --smol-debug SCRIPT` (the PyInstaller launcher) and `smolpack run --debug
tool -- SCRIPT`, cycling through stdin piped in, stdin from /dev/null, stderr and an exit
code, and a large output. A round that hangs or answers wrong keeps its run files (console
log, krun.log) and its last stderr lines are printed.

    python bench/stress_restore.py --engine krun --rounds 30 [--limit 60] [--pack P | --keep-pack P]
Exit 0 when every round gave the expected output and exit code, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSYBOX = "/bin/busybox"
# (script, stdin, expected stdout, expected code)
ROUNDS = [
    ("cat", b"payload-bytes\n", b"payload-bytes\n", 0),
    ("head -c 16 /dev/urandom | od -An -tx1 | wc -w", None, b"16\n", 0),
    ("echo out; echo err >&2; exit 3", None, b"out\n", 3),
    ("head -c 300000 /dev/zero | tr '\\0' x | wc -c", b"", b"300000\n", 0),
]


def make_pack(engine: str, work: Path, pack: Path | None = None) -> Path:
    src = work / "src"
    for d in ("bin", "etc", "root", "tmp", "dev", "proc", "sys", "run"):
        (src / "rootfs" / d).mkdir(parents=True)
    (src / "rootfs" / "bin" / "busybox").write_bytes(Path(BUSYBOX).read_bytes())
    os.chmod(src / "rootfs" / "bin" / "busybox", 0o755)
    for applet in ("sh", "cat", "head", "od", "wc", "tr", "echo"):
        (src / "rootfs" / "bin" / applet).symlink_to("busybox")
    (src / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        'init = ["echo warm > /root/warm"]\n'
    )
    pack = pack or work / "stress-tool"
    cmd = [sys.executable, "-m", "smolpack", "create", "-q", f"--state={engine}", "-o", str(pack)]
    subprocess.run([*cmd, str(src)], check=True)
    return pack


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="krun", choices=["krun", "qemu"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--limit", type=float, default=60.0, help="seconds before a round hangs")
    ap.add_argument("--pack", type=Path, help="restore this pack instead of building one")
    ap.add_argument("--keep-pack", type=Path, help="build the pack here (and keep it)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smolpack-stress-"))
    pack = args.pack or make_pack(args.engine, work, args.keep_pack)
    env = {**os.environ, "SMOLPACK_ENGINE": args.engine, "XDG_RUNTIME_DIR": str(work)}
    bad, times = [], []
    for i in range(args.rounds):
        script, stdin, want_out, want_code = ROUNDS[i % len(ROUNDS)]
        if i % 2:
            cmd = [sys.executable, "-m", "smolpack", "run", "--debug", str(pack), "--", script]
        else:
            cmd = [str(pack), "--smol-debug", script]
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                cmd, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True, env=env, timeout=args.limit,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exp:
            err = (exp.stderr or b"").decode(errors="replace").strip().splitlines()
            bad.append(f"round {i} ({script!r}) hung > {args.limit:g} s; stderr: {err[-8:]}")
            print(f"round {i}: HUNG", flush=True)
            continue
        took = time.monotonic() - t0
        times.append(took)
        err = res.stderr.decode(errors="replace")
        kept = [
            line.split(" in ", 1)[1] for line in err.splitlines() if "run files kept in" in line
        ]
        ok = (res.returncode, res.stdout) == (want_code, want_out)
        if ok:
            for d in kept:
                subprocess.run(["rm", "-rf", d])
        else:
            bad.append(f"round {i} ({script!r}): exit {res.returncode}, out {res.stdout[:80]!r}, "
                       f"stderr {err.strip().splitlines()[-6:]}")  # fmt: skip
        timing = [x for x in err.splitlines() if " restore " in x or " cold boot " in x]
        print(f"round {i}: {'ok' if ok else 'WRONG'} {took:.2f} s {timing[-1:]}", flush=True)
    times.sort()
    if times:
        print(f"{len(times)} rounds finished: median {times[len(times) // 2]:.2f} s,"
              f" max {times[-1]:.2f} s")  # fmt: skip
    for line in bad:
        print("FAIL " + line)
    print(f"stress: {args.rounds - len(bad)} rounds ok, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
