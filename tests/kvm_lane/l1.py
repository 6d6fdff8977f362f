#!/usr/bin/env python3
"""Run one command inside an L1 machine that has a real /dev/kvm (the nested-KVM lane).

Our machines' own /dev/kvm is kvm_pvm, on which no libkrun guest runs. QEMU's TCG with
`-cpu max` emulates AMD SVM with nested paging, so a Debian kernel booted that way (L1)
loads kvm_amd and gets a working /dev/kvm (shared/reference/nested-kvm). This script:

1. fetches Debian's current generic kernel (`linux-image-amd64` names the ABI, e.g.
   6.1.0-57: never pinned) and busybox-static with `apt-get download`, unpacks them with
   dpkg-deb into a cache, and keeps only the modules L1 needs (virtio, 9p, overlay, kvm);
2. boots it under QEMU TCG with the host's root tree shared read-only over 9p (virtfs);
   L1's init puts a tmpfs overlay on top, so L1 sees the project and its Python
   environment as the host has them (its install step has run there) and may write;
3. runs the command in that tree, in the caller's directory with the caller's
   environment, and hands its stdout, stderr and exit status back over virtio-serial
   ports, so `l1.py -- CMD` behaves like `CMD`.

`--lean-python` hides the site directories' .pth start-up hooks inside L1 (the overlay
only; the host keeps them) and puts the project on PYTHONPATH instead: under TCG each
hook's imports cost seconds at every Python start (measured: `python3 -c pass` 3-8 s with
them, 1.1 s without).

Usage: tests/kvm_lane/l1.py [--cpu max] [--mem MiB] [--smp N] [--timeout S] [--lean-python]
       -- CMD [ARG...]
Exit: the command's code; 2 usage; 3 the lane could not be set up (one line says why).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("SMOLPACK_L1_CACHE", Path.home() / ".cache" / "smolpack-l1"))
# Modules L1 loads, in order (dependencies are resolved from each module's modinfo).
MODULES = [
    "virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay",
    "irqbypass", "kvm", "ccp", "kvm-amd",
]  # fmt: skip
PORTS = ("l1.stdout", "l1.stderr", "l1.status")
# Host variables that describe the host's session, not the command's environment.
SKIP_ENV = {"TERM", "TMUX", "TMUX_PANE", "SSH_AUTH_SOCK", "DISPLAY", "OLDPWD", "SHLVL", "_"}
EXIT_SETUP = 3


class LaneError(Exception):
    """The lane could not be set up or L1 failed; one line for the user."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", default=os.environ.get("SMOLPACK_L1_CPU", "max"))
    ap.add_argument("--mem", type=int, default=int(os.environ.get("SMOLPACK_L1_MEM", "6144")))
    ap.add_argument("--smp", type=int, default=int(os.environ.get("SMOLPACK_L1_SMP", "2")))
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds before L1 is killed")
    ap.add_argument("--console", action="store_true", help="copy L1's console to stderr")
    ap.add_argument(
        "--share", action="append", default=[], metavar="DIR",
        help="a host directory L1 writes through to (same path; repeatable)",
    )  # fmt: skip
    ap.add_argument("--lean-python", action="store_true", help="no .pth hooks at Python starts")
    ap.add_argument("command", nargs="+")
    args = ap.parse_args(argv)
    # SIGTERM (CI's or pytest's timeout) unwinds through run_in_l1's `finally`: L1's QEMU
    # goes down with us rather than running on, orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return run_in_l1(
            args.command, cpu=args.cpu, mem=args.mem, smp=args.smp,
            timeout=args.timeout, console=args.console, shares=args.share,
            lean_python=args.lean_python,
        )  # fmt: skip
    except LaneError as err:
        print(f"l1: error: {err}", file=sys.stderr)
        return EXIT_SETUP


def check_host() -> None:
    """Say in one line why this host cannot run the lane."""
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("apt-get", "apt"),
                      ("dpkg-deb", "dpkg")):  # fmt: skip
        if shutil.which(tool) is None:
            raise LaneError(f"{tool} is not installed (apt-get install {pkg})")
    if os.uname().machine != "x86_64":
        raise LaneError(
            f"the lane emulates an x86_64 L1 with AMD SVM; this host is {os.uname().machine}"
        )


def kernel_package() -> str:
    """The current Debian kernel package (the ABI moves with security updates)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    found = re.findall(r"Depends:\s+(linux-image-\d[^\s]*-amd64)\b", out)
    if not found:
        raise LaneError("apt-cache does not resolve linux-image-amd64 (run apt-get update)")
    return found[0]


def prepare() -> tuple[Path, Path, Path]:
    """(vmlinuz, modules dir with the ordered .ko files, static busybox), cached."""
    pkg = kernel_package()
    root = CACHE / pkg
    done = root / "ready"
    if not done.exists():
        print(f"l1: fetching {pkg} and busybox-static (once)", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        debs, tree = root / "debs", root / "tree"
        debs.mkdir(parents=True)
        for name in (pkg, "busybox-static"):
            _run(["apt-get", "download", name], cwd=debs)
        for deb in debs.glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        _collect_modules(tree, root / "modules")
        (tree / "boot").rename(root / "boot")
        shutil.copy(tree / "bin" / "busybox", root / "busybox")
        shutil.rmtree(tree)
        shutil.rmtree(debs)
        done.touch()
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    return vmlinuz, root / "modules", root / "busybox"


def _collect_modules(tree: Path, dest: Path) -> None:
    """Copy MODULES and their dependencies, numbered in load order."""
    found = {
        p.name.removesuffix(".ko").replace("-", "_"): p
        for p in tree.glob("lib/modules/*/kernel/**/*.ko")
    }
    order: list[str] = []

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key not in found:
            raise LaneError(f"the kernel package has no module {name}")
        info = found[key].read_bytes()
        deps = re.search(rb"\x00depends=([^\x00]*)\x00", info)
        for dep in deps.group(1).decode().split(",") if deps and deps.group(1) else []:
            visit(dep)
        order.append(key)

    for name in MODULES:
        visit(name)
    dest.mkdir(parents=True)
    for i, key in enumerate(order):
        shutil.copy(found[key], dest / f"{i:02d}-{key}.ko")


def build_initrd(work: Path, modules: Path, busybox: Path, script: str, mounts: str = "") -> Path:
    root = work / "initrd"
    for d in ("bin", "dev", "proc", "sys", "mods", "host", "upper", "newroot"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for ko in modules.iterdir():
        shutil.copy(ko, root / "mods" / ko.name)
    shutil.copy(HERE / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    (root / "command.sh").write_text(script)
    (root / "shares").write_text(mounts)  # "<n> <path>" per line: tag share<n> goes there
    out = work / "initrd.cpio"
    out.write_bytes(newc_archive(root))
    return out


def newc_archive(root: Path) -> bytes:
    """`root` as a cpio "newc" archive (the initramfs format; no cpio binary needed)."""
    parts: list[bytes] = []

    def entry(name: str, mode: int, data: bytes) -> None:
        raw = name.encode() + b"\0"
        fields = (len(parts), mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        parts.append(head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4))

    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            entry(rel, 0o120777, os.readlink(path).encode())
        elif path.is_dir():
            entry(rel, 0o040755, b"")
        else:
            entry(rel, 0o100000 | (path.stat().st_mode & 0o7777), path.read_bytes())
    entry("TRAILER!!!", 0, b"")
    return b"".join(parts)


def command_script(
    command: list[str], cwd: str, env: dict[str, str], lean_python: bool = False
) -> str:
    """What L1 runs inside the host tree: the caller's environment, directory and argv."""
    lines = ["#!/bin/sh", "export PYTHONUNBUFFERED=1  # output as it happens, not at exit"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())
              if k not in SKIP_ENV and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]  # fmt: skip
    if lean_python:
        py, repo = shlex.quote(sys.executable), shlex.quote(str(HERE.parents[1]))
        lines += [
            f"for d in $({py} -S -c 'import site; print(*site.getsitepackages())'); do",
            '  for f in "$d"/*.pth; do [ -e "$f" ] && mv "$f" "$f.l1-hidden"; done',
            "done",
            f'export PYTHONPATH={repo}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        ]
    lines += [f"cd {shlex.quote(cwd)} || exit 126", "exec " + shlex.join(command)]
    return "\n".join(lines) + "\n"


def run_in_l1(
    command: list[str], *, cpu: str, mem: int, smp: int, timeout: float,
    console: bool = False, shares: list[str] | None = None, lean_python: bool = False,
) -> int:  # fmt: skip
    check_host()
    dirs = [Path(d).resolve() for d in shares or []]
    for d in dirs:
        if not d.is_dir() or "," in str(d) or " " in str(d):
            raise LaneError(f"--share {d}: not a directory (or its name has a comma or space)")
    vmlinuz, modules, busybox = prepare()
    work = Path(tempfile.mkdtemp(prefix="smolpack-l1-"))
    try:
        script = command_script(command, os.getcwd(), dict(os.environ), lean_python)
        mounts = "".join(f"{i} {d}\n" for i, d in enumerate(dirs))
        initrd = build_initrd(work, modules, busybox, script, mounts)
        return _boot(
            work, vmlinuz, initrd, cpu=cpu, mem=mem, smp=smp, timeout=timeout,
            console=console, shares=dirs,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot(work: Path, vmlinuz: Path, initrd: Path, *, cpu: str, mem: int, smp: int,
          timeout: float, console: bool, shares: list[Path]) -> int:  # fmt: skip
    socks = {name: work / f"{name}.sock" for name in PORTS}
    log = work / "console.log"
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", cpu, "-smp", str(smp),
        "-m", str(mem), "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{log}", "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 loglevel=4 panic=-1 quiet",
        "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-serial-pci",
    ]  # fmt: skip
    for i, d in enumerate(shares):
        qemu += [
            "-virtfs",
            f"local,path={d},mount_tag=share{i},security_model=none,multidevs=remap",
        ]
    for i, (name, path) in enumerate(socks.items()):
        qemu += ["-chardev", f"socket,id=p{i},path={path},server=on,wait=off",
                 "-device", f"virtserialport,chardev=p{i},name={name}"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        conns = {name: _connect(path, proc) for name, path in socks.items()}
        status = bytearray()
        pumps = [
            threading.Thread(
                target=_pump, args=(conns["l1.stdout"], sys.stdout.buffer), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(conns["l1.stderr"], sys.stderr.buffer), daemon=True
            ),
            threading.Thread(target=_collect, args=(conns["l1.status"], status), daemon=True),
        ]
        for t in pumps:
            t.start()
        tail = threading.Thread(target=_tail, args=(log, proc), daemon=True) if console else None
        if tail:
            tail.start()
        while proc.poll() is None:
            hung = _hung(log)
            if hung or time.monotonic() - started > timeout:
                proc.kill()
                proc.wait()
                why = f"L1 hung ({hung})" if hung else f"L1 did not finish within {timeout:g} s"
                raise LaneError(f"{why}; console tail:\n{_tail_text(log)}")
            time.sleep(2)
        for t in pumps:
            t.join(timeout=5)
        text = status.decode(errors="replace")
        m = re.search(r"rc=(\d+)", text)
        if m is None:
            why = re.search(r"error: (.*)", text)
            detail = why.group(1) if why else f"QEMU exited {proc.returncode}, no status"
            out = proc.stdout.read().decode(errors="replace").strip() if proc.stdout else ""
            raise LaneError(
                f"L1 failed: {detail}{'; qemu: ' + out if out else ''}\n{_tail_text(log)}"
            )
        print(f"l1: {cpu} L1 ran the command in {time.monotonic() - started:.1f} s "
              f"({text.strip()})", file=sys.stderr)  # fmt: skip
        return int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HUNG_S = 120  # a CPU stuck this long never came back in our runs (MTTCG under host load)


def _hung(log: Path) -> str | None:
    """The L1 kernel's own word that it hangs: a soft lockup of HUNG_S or more."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    stuck = re.findall(r"soft lockup - (CPU#\d+) stuck for (\d+)s!", text)
    worst = max(stuck, key=lambda m: int(m[1]), default=None)
    return f"{worst[0]} stuck for {worst[1]} s" if worst and int(worst[1]) >= HUNG_S else None


def _connect(path: Path, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace").strip() if proc.stdout else ""
                raise LaneError(f"QEMU did not start: {out or 'exited'}") from None
            time.sleep(0.05)


def _pump(conn: socket.socket, out: object) -> None:
    while chunk := conn.recv(65536):
        out.write(chunk)  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]


def _collect(conn: socket.socket, buf: bytearray) -> None:
    while chunk := conn.recv(4096):
        buf += chunk


def _tail(log: Path, proc: subprocess.Popen[bytes]) -> None:
    pos = 0
    while proc.poll() is None:
        time.sleep(0.2)
        try:
            with log.open("rb") as f:
                f.seek(pos)
                data = f.read()
        except OSError:
            continue
        pos += len(data)
        sys.stderr.buffer.write(data)
        sys.stderr.flush()


def _tail_text(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no console)"
    return "\n".join("  | " + line for line in text.splitlines()[-lines:])


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise LaneError(f"{' '.join(cmd)}: {last}")
    return res.stdout


if __name__ == "__main__":
    sys.exit(main())
