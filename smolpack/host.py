"""Host capability facts: architecture, OS, hardware virtualization, QEMU (run + create stages).

The facts behind "which engine can run a guest here, and why" (the engines answer it,
`engine.select`): krun needs working hardware virtualization (KVM on Linux,
Hypervisor.framework on macOS) plus libkrun; otherwise QEMU, with KVM acceleration when
usable and TCG software emulation when not.

Why the KVM probe reads more than /dev/kvm: on our machines /dev/kvm exists but is served
by `kvm_pvm` (page-table virtualization, no vmx/svm); a normal guest kernel dies there with
KVM_EXIT_INTERNAL_ERROR after ~13 s, so "the device opens" is not "KVM works".

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from smolpack.errors import HostError

Arch = Literal["x86_64", "aarch64"]
_ARCH_ALIASES: dict[str, Arch] = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}
# Debian/Ubuntu package carrying qemu-system-<arch>.
_APT_QEMU = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}


def host_arch(machine: str | None = None) -> Arch:
    """This host's CPU architecture in the kernel's spelling."""
    raw = platform.machine() if machine is None else machine
    arch = _ARCH_ALIASES.get(raw.lower())
    if arch is None:
        raise HostError(f"unsupported host architecture {raw!r}", hint="use x86_64 or aarch64")
    return arch


def host_os() -> str:
    """'linux', 'macos', or the lower-cased platform name for anything else."""
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    return platform.system().lower() or sys.platform


def host_target() -> str:
    """This host as a launcher-stub target: linux-x86_64, linux-aarch64, macos-arm64."""
    os_name, arch = host_os(), host_arch()
    if os_name == "macos":
        return "macos-arm64" if arch == "aarch64" else "macos-x86_64"
    return f"{os_name}-{arch}"


class KvmStatus(NamedTuple):
    """Whether a normal guest kernel can run on this host's hypervisor, and why."""

    usable: bool
    reason: str


def kvm_status(
    *,
    dev_kvm: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    arch: Arch | None = None,
) -> KvmStatus:
    """Probe KVM from files only (no ioctl); the paths are parameters so tests can fake a host."""
    if not dev_kvm.exists():
        return KvmStatus(False, f"{dev_kvm} does not exist (KVM not loaded or not exposed)")
    if (sys_module / "kvm_pvm").exists():
        return KvmStatus(
            False, f"{dev_kvm} is provided by kvm_pvm, which cannot run a normal guest kernel"
        )
    if (arch or host_arch()) == "x86_64":
        try:
            flags = _cpu_flags(cpuinfo.read_text(errors="replace"))
        except OSError:
            flags = None
        if flags is not None and not flags & {"vmx", "svm"}:
            return KvmStatus(False, "the CPU reports no vmx/svm (no hardware virtualization)")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return KvmStatus(
            False, f"{dev_kvm} is not readable and writable by this user (add it to group kvm)"
        )
    for module in ("kvm_intel", "kvm_amd", "kvm"):
        if (sys_module / module).exists():
            return KvmStatus(True, f"{dev_kvm} is usable ({module})")
    return KvmStatus(True, f"{dev_kvm} is usable")


@dataclass(frozen=True, slots=True)
class CpuId:
    """What a saved vCPU state needs of the host CPU: its vendor and feature flags."""

    vendor: str
    flags: frozenset[str]

    def missing_here(self, here: CpuId) -> list[str]:
        """What of `self` (the saving host) `here` lacks: a vendor change or flags."""
        if self.vendor != here.vendor:
            return [f"vendor {self.vendor} (this CPU is {here.vendor})"]
        return sorted(self.flags - here.flags)


def cpu_id(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuId:
    """This host's CPU vendor and flags (Linux; empty where /proc/cpuinfo says nothing)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    vendor = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            vendor = value.strip()
            break
    return CpuId(vendor, frozenset(_cpu_flags(text)))


def _cpu_flags(text: str) -> set[str]:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def hvf_status() -> KvmStatus:
    """macOS: Hypervisor.framework availability (`sysctl kern.hv_support`)."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return KvmStatus(False, f"cannot query kern.hv_support: {err}")
    if out == "1":
        return KvmStatus(True, "Hypervisor.framework is available")
    return KvmStatus(False, "Hypervisor.framework is unavailable (kern.hv_support != 1)")


def hypervisor_status() -> KvmStatus:
    """Hardware virtualization on this host, whatever the OS calls it."""
    if host_os() == "macos":
        return hvf_status()
    if host_os() == "linux":
        return kvm_status()
    return KvmStatus(False, f"no supported hypervisor on {host_os()}")


def find_qemu(guest_arch: Arch, *, search_path: str | None = None) -> Path:
    """Absolute path of `qemu-system-<guest_arch>`, or `HostError` with an install hint."""
    name = f"qemu-system-{guest_arch}"
    found = shutil.which(name, path=search_path)
    if found is None:
        hint = (
            "run `brew install qemu`"
            if host_os() == "macos"
            else f"run `apt-get install {_APT_QEMU[guest_arch]}` (or your distribution's qemu)"
        )
        raise HostError(f"{name} not found on PATH", hint=hint)
    return Path(found)


def qemu_version(binary: Path) -> str:
    """'7.2.22' from `qemu-system-* --version`, or HostError if it does not run."""
    try:
        res = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HostError(f"{binary} --version failed: {err}") from err
    first = res.stdout.splitlines()[0] if res.stdout else ""
    words = first.split()
    if res.returncode != 0 or "version" not in words or words.index("version") + 1 >= len(words):
        raise HostError(f"{binary} --version printed no version (exit {res.returncode})")
    return words[words.index("version") + 1]
