"""Stress: cold-boot the build VM many times and count handshakes that never come.

Not run by the test suite. Each round boots a fresh QEMU (the same device model and kernel
command line `smolpack create` uses) on one busybox disk, handshakes with the agent with a
short timeout, and stops QEMU. On a failure it keeps, per round, the console log, QEMU's
stderr, `query-status`, `info registers`, and whether a second handshake right after the QMP
queries succeeded (a QMP command wakes QEMU's main loop).

    python bench/stress_boot.py --rounds 60 [--busy] [--jobs 2] [--cmdline "..."] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QEMU_BINARY: str | None = None  # --qemu: e.g. a wrapper script that edits the command line
sys.path.insert(0, str(ROOT))

from smolpack.agent.binary import agent_binary  # noqa: E402
from smolpack.agent.session import AgentSession  # noqa: E402
from smolpack.disk import build_ext4  # noqa: E402
from smolpack.engine.qemu import (  # noqa: E402
    AGENT_GUEST_PATH,
    KERNEL_CMDLINE,
    QemuMachine,
    QemuVm,
    RootDisk,
)
from smolpack.errors import SmolpackError  # noqa: E402
from smolpack.image import prepare_rootfs  # noqa: E402
from smolpack.kernel import extract_kernel, kernel_elf_path  # noqa: E402
from smolpack.runtime_libs import find_runtime_libs  # noqa: E402


def make_base(work: Path) -> Path:
    rootfs = work / "rootfs-src"
    subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", rootfs], check=True)
    tree = work / "tree"
    prepare_rootfs(rootfs, tree)
    base = work / "base.raw"
    build_ext4(tree, base, extra_files={AGENT_GUEST_PATH: (agent_binary("x86_64"), 0o755)})
    shutil.rmtree(tree)
    shutil.rmtree(rootfs)
    return base


def one_boot(
    machine: QemuMachine, base: Path, run_dir: Path, timeout_s: float
) -> tuple[float | None, str]:
    """Boot and handshake once: (seconds to the ACK or None, diagnostics on failure)."""
    overlay = run_dir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay)],
        check=True,
    )
    start = time.monotonic()
    disk = RootDisk(path=base, size=base.stat().st_size, overlay=overlay)
    vm = QemuVm(machine, disk, run_dir=run_dir, binary=QEMU_BINARY)
    try:
        session = AgentSession(vm.agent)
        try:
            session.handshake(timeout_s)
            return time.monotonic() - start, ""
        except SmolpackError as exc:
            notes = [f"error: {exc}"]
            for cmd in ("query-status", "query-chardev"):
                try:
                    notes.append(f"{cmd}: {vm.qmp.execute(cmd)}")
                except SmolpackError as qexc:
                    notes.append(f"{cmd}: {qexc}")
            for hmp in ("info registers", "info lapic", "info pic", "info irq"):
                try:
                    out = vm.qmp.execute("human-monitor-command", {"command-line": hmp})
                    notes.append(f"{hmp}:\n{out}")
                except SmolpackError as qexc:
                    notes.append(f"{hmp}: {qexc}")
            notes.append("guest kernel log (from a memory dump):\n" + _guest_log(vm, run_dir))
            retry = time.monotonic()
            try:
                session.handshake(5.0)
                notes.append(f"second handshake after QMP: OK in {time.monotonic() - retry:.2f} s")
            except SmolpackError as rexc:
                notes.append(f"second handshake after QMP: {rexc}")
            return None, "\n".join(notes)
        finally:
            session.close()
    finally:
        vm.close()
        overlay.unlink(missing_ok=True)


def _guest_log(vm: QemuVm, run_dir: Path) -> str:
    """The printk lines still in guest RAM (the console may never have come up)."""
    dump = run_dir / "guest-ram.bin"
    size = vm.machine.memory_mib << 20
    try:
        vm.qmp.execute("pmemsave", {"val": 0, "size": size, "filename": str(dump)})
        deadline = time.monotonic() + 30
        while dump.stat().st_size < size and time.monotonic() < deadline:
            time.sleep(0.1)
        text = subprocess.run(
            ["strings", "-n", "12", str(dump)], capture_output=True, text=True
        ).stdout
    except (OSError, SmolpackError) as exc:
        return f"(no dump: {exc})"
    finally:
        dump.unlink(missing_ok=True)
    # printk records sit in the log buffer as plain text; skip the kernel's format strings
    # (they start with a log level digit or hold a % conversion).
    keys = ("tsc:", "Calibrating", "timer", "APIC", "clocksource", "PIC", "Command line")
    lines = [
        line
        for line in text.splitlines()
        if any(k in line for k in keys) and "%" not in line and not line[:1].isdigit()
    ]
    return "\n".join(lines[-60:])


def loop(
    name: str,
    rounds: int,
    machine: QemuMachine,
    base: Path,
    work: Path,
    keep: Path,
    timeout_s: float,
    results: list[tuple[str, int, float | None]],
) -> None:
    for i in range(rounds):
        run_dir = work / f"{name}-{i}"
        run_dir.mkdir()
        took, notes = one_boot(machine, base, run_dir, timeout_s)
        results.append((name, i, took))
        status = f"{took:.2f} s" if took is not None else "FAILED"
        print(f"[{name}] round {i + 1}/{rounds}: {status}", flush=True)
        if took is None:
            dest = keep / f"{name}-{i}"
            shutil.copytree(run_dir, dest)
            (dest / "notes.txt").write_text(notes + "\n")
            print(f"[{name}]   kept {dest}:\n{notes[:600]}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="boots per job")
    parser.add_argument("--jobs", type=int, default=1, help="boot loops running side by side")
    parser.add_argument("--busy", action="store_true", help="keep one core busy (yes > /dev/null)")
    parser.add_argument("--timeout", type=float, default=20.0, help="handshake timeout, s")
    parser.add_argument("--cmdline", default=KERNEL_CMDLINE, help="guest kernel command line")
    parser.add_argument("--qemu", help="QEMU binary (default: qemu-system-x86_64 on PATH)")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/stress-boot-failures"))
    args = parser.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    global QEMU_BINARY
    QEMU_BINARY = args.qemu
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    kernel = kernel_elf_path(extract_kernel(find_runtime_libs()))
    machine = QemuMachine(
        guest_arch="x86_64", cpus=1, memory_mib=256, kernel=kernel, cmdline=args.cmdline
    )
    busy = None
    if args.busy:
        busy = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    results: list[tuple[str, int, float | None]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="stress-boot-") as tmp:
            work = Path(tmp)
            base = make_base(work)
            threads = [
                threading.Thread(
                    target=loop,
                    args=(
                        f"j{j}",
                        args.rounds,
                        machine,
                        base,
                        work,
                        args.keep,
                        args.timeout,
                        results,
                    ),
                    daemon=True,
                )
                for j in range(args.jobs)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    times = [t for _, _, t in results if t is not None]
    failed = len(results) - len(times)
    print(
        f"boots {len(results)}, failed {failed} (no ACK within {args.timeout:g} s),"
        f" busy={args.busy}, jobs={args.jobs}, cmdline={args.cmdline!r}"
    )
    if times:
        print(
            f"boot to ACK: median {statistics.median(times):.2f} s,"
            f" min {min(times):.2f}, max {max(times):.2f}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
