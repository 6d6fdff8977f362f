"""Helpers shared by the end-to-end tests (imported by conftest and the tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = [
    "sh", "cat", "echo", "head", "od", "date", "sleep", "ls", "sync", "kill", "tty", "stty",
    "env", "pwd", "printf", "test", "true", "false", "wc", "sha256sum", "mkdir", "rm", "dd",
]  # fmt: skip


def make_busybox_rootfs(dest: Path, *, all_applets: bool = False) -> Path:
    """A minimal root tree: static busybox and a few applet links (or all of them)."""
    if not Path(BUSYBOX).exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    for d in ("bin", "etc", "root", "tmp", "dev", "proc", "sys", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, dest / "bin" / "busybox")
    applets = APPLETS
    if all_applets:
        listed = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
        applets = [a for a in listed.stdout.split() if a != "busybox"]
    for applet in applets:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return dest


def smolpack(
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "smolpack", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


# The krun engine's VMM child names itself smolpack-vmm (PR_SET_NAME); once it enters,
# libkrun renames the thread "libkrun VM".
VMM_COMMS = ("smolpack-vmm", "libkrun VM")
# How each engine's VMM dying under a run is named (formats/exit-codes.md, "A VM that stops").
KILLED = {
    "qemu": b"QEMU was killed by SIGKILL",
    "krun": b"the libkrun VM process was killed by SIGKILL",
}
STATE = {"qemu": "qemu-x86_64/migration", "krun": "krun-x86_64/memory.data"}


def _proc_pids(comm: Callable[[str], bool], marker: str, files: tuple[str, ...]) -> set[int]:
    """Processes running now whose name (/proc/PID/comm) passes `comm` and whose `files`
    (under /proc/PID, read one after the other) contain `marker`; a process any of whose
    files cannot be read does not count."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not comm(Path(f"/proc/{entry}/comm").read_text().strip()):
                continue
            seen = b"".join(Path(f"/proc/{entry}/{name}").read_bytes() for name in files)
        except OSError:
            continue
        if marker.encode() in seen:
            pids.add(int(entry))
    return pids


def vmm_pids(engine: str, marker: str = "") -> set[int]:
    """The VMM processes of `engine` running now (QEMU, or krun's forked VMM child); with
    `marker`, only those whose command line or environment has it."""
    if engine == "qemu":
        return qemu_pids(marker)
    return _proc_pids(VMM_COMMS.__contains__, marker, ("cmdline", "environ"))


def vmm_rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in text.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def qemu_pids(marker: str = "") -> set[int]:
    """QEMU processes running now; with `marker`, only those whose command line has it
    (the session's temp dir), so other test runs on the same machine do not count."""
    # Without a marker the command line is not read: it need not be readable.
    files = ("cmdline",) if marker else ()
    return _proc_pids(lambda comm: comm.startswith("qemu-system"), marker, files)


def rewrite_pack(
    src: Path,
    dst: Path,
    *,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    section: tuple[str, Callable[[bytearray], None]] | None = None,
) -> Path:
    """A copy of the pack at `src`, resealed (valid digests), with its manifest edited by
    `manifest(obj)` and/or one section's bytes edited by `section = (name, edit)`."""
    import json

    from smolpack.payload import Manifest, PayloadWriter, open_payload

    work = dst.parent / (dst.name + ".parts")
    work.mkdir()
    try:
        with open_payload(src) as pack, PayloadWriter(dst) as writer:
            for name, entry in pack.sections.items():
                if entry.kind == 1:  # the manifest
                    obj = json.loads(pack.read_section(name))
                    if manifest is not None:
                        manifest(obj)
                    data = Manifest.from_dict(obj).to_json()
                    writer.add_bytes(name, entry.kind, data, codec=entry.codec)  # type: ignore[arg-type]
                    continue
                part = work / str(len(list(work.iterdir())))
                pack.copy_section_to(name, part)
                if section is not None and section[0] == name:
                    data = bytearray(part.read_bytes())
                    section[1](data)
                    part.write_bytes(data)
                writer.add_file(name, entry.kind, part, codec=entry.codec)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work)
    return dst
