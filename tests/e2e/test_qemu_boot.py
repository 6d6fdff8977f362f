"""First real boot: libkrunfw's kernel, wrapped as a PVH ELF, boots under QEMU microvm (TCG).

Proves the kernel path end to end and pins the QEMU command line the QEMU engine builds on:
a static init on an ext4 root prints a marker to the virtio console (hvc0), lists the
virtio-serial port names it sees, and resets the VM; `-no-reboot` makes that reset end QEMU.

Measured on the 2-core dev machine (QEMU 7.2 TCG, 256 MiB, kernel 6.18.55, 5 runs): QEMU
start to marker 1.5-1.9 s (the kernel reaches /init at ~1.25 s guest time), QEMU exit 0.02 s
later. `reboot=t` matters: without it the kernel first tries the ACPI and keyboard-controller
resets microvm lacks, and QEMU exits ~3.1 s after the marker instead of ~0.02 s.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolpack.host import find_qemu
from smolpack.kernel import extract_kernel, kernel_elf_path
from smolpack.runtime_libs import find_runtime_libs

HERE = Path(__file__).resolve().parent
MARKER = "SMOLPACK-BOOT-OK"
END = "SMOLPACK-BOOT-END"
AGENT_PORT = "smolpack.agent"
BOOT_TIMEOUT_S = 90.0  # TCG on a shared 2-core machine; normally ~4 s

pytestmark = pytest.mark.vm


def qemu_command(
    qemu: Path, kernel: Path, root_img: Path, console_log: Path, agent_sock: Path
) -> list[str]:
    return [
        str(qemu),
        "-M", "microvm,acpi=off",  # PVH boot, virtio-mmio only; with ACPI on it prints nothing
        "-accel", "tcg",
        "-m", "256",
        "-nographic", "-nodefaults",
        "-no-reboot",  # the guest's reset (reboot(RB_AUTOBOOT)) ends QEMU
        "-kernel", str(kernel),
        # reboot=t: reset by triple fault at once (see the module docstring)
        "-append", "console=hvc0 root=/dev/vda rw init=/init reboot=t",
        "-device", "virtio-serial-device",
        "-chardev", f"file,id=con,path={console_log}",
        "-device", "virtconsole,chardev=con",
        "-chardev", f"socket,id=agent,path={agent_sock},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-drive", f"id=root,file={root_img},format=raw,if=none",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def kernel_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kernel_elf_path(
        extract_kernel(find_runtime_libs()), root=tmp_path_factory.mktemp("cache")
    )


@pytest.fixture
def root_img(tmp_path: Path) -> Path:
    cc = shutil.which("musl-gcc") or shutil.which("gcc")
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/sbin:/usr/sbin")
    if cc is None or mkfs is None:
        pytest.skip("needs musl-gcc or gcc, and mkfs.ext4 (e2fsprogs)")
    tree = tmp_path / "root"
    tree.mkdir()
    subprocess.run(
        [cc, "-static", "-Os", "-o", str(tree / "init"), str(HERE / "boot_init.c")], check=True
    )
    img = tmp_path / "root.img"
    cmd = [mkfs, "-q", "-F", "-d", str(tree), str(img), "8M"]
    subprocess.run(cmd, check=True, capture_output=True)
    return img


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="smolpack-e2e-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_libkrunfw_kernel_boots_under_qemu(
    kernel_elf: Path, root_img: Path, sock_dir: Path, tmp_path: Path
) -> None:
    qemu = find_qemu("x86_64")
    console = tmp_path / "console.log"
    agent_sock = sock_dir / "agent.sock"
    cmd = qemu_command(qemu, kernel_elf, root_img, console, agent_sock)
    start = time.monotonic()
    qemu_log = tmp_path / "qemu.log"
    with qemu_log.open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    marker_s = None
    try:
        # Connect to the agent port as a launcher would: proves the host side is there.
        host_end = None
        while time.monotonic() - start < BOOT_TIMEOUT_S and proc.poll() is None:
            if host_end is None and agent_sock.exists():
                host_end = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                host_end.connect(str(agent_sock))
            text = console.read_text(errors="replace") if console.exists() else ""
            if marker_s is None and MARKER in text:
                marker_s = time.monotonic() - start
            time.sleep(0.02)
        rc = proc.wait(timeout=max(1.0, BOOT_TIMEOUT_S - (time.monotonic() - start)))
        exit_s = time.monotonic() - start
        if host_end is not None:
            host_end.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = qemu_log.read_text(errors="replace")
    text = console.read_text(errors="replace") if console.exists() else ""
    context = f"qemu output:\n{out}\nconsole ({console}):\n{text}"
    assert rc == 0, context
    assert marker_s is not None, context
    lines = text.splitlines()
    assert MARKER in lines and END in lines, context
    # The named port shows up in the guest under its name (the agent channel's design).
    assert any(line.startswith("PORT vport") and line.endswith(f" {AGENT_PORT}") for line in lines)
    print(f"\nqemu start -> marker {marker_s:.2f} s, -> qemu exit {exit_s:.2f} s")
