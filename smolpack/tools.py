"""Every external program smolpack runs, where it is and which version (for `smolpack doctor`).

A packed tool needs only QEMU (on hosts without a usable hypervisor); `create` also needs
qemu-img, e2fsprogs and a C compiler for the guest agent. Each entry says which package
provides it, so a missing one is a one-line fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from smolpack.agent.binary import find_compiler
from smolpack.errors import HostError, UsageError
from smolpack.host import host_arch


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    name: str  # program name looked up on PATH (plus /usr/sbin:/sbin)
    used_by: str  # "run" (packed tools, smolpack run) or "create"
    package: str  # Debian package that provides it
    version_args: tuple[str, ...] = ("--version",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStatus:
    tool: Tool
    path: str | None  # None: not found
    version: str | None  # first line the program printed about itself

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.tool.name,
            "used_by": self.tool.used_by,
            "package": self.tool.package,
            "path": self.path,
            "version": self.version,
        }


def tools(arch: str) -> list[Tool]:
    return [
        Tool(name=f"qemu-system-{arch}", used_by="run, create", package=_qemu_package(arch)),
        Tool(name="qemu-img", used_by="create", package="qemu-utils"),
        Tool(name="mkfs.ext4", used_by="create", package="e2fsprogs", version_args=("-V",)),
        Tool(name="debugfs", used_by="create", package="e2fsprogs", version_args=("-V",)),
        Tool(name="dumpe2fs", used_by="create", package="e2fsprogs", version_args=("-V",)),
        Tool(name=_compiler(arch), used_by="create (guest agent)", package="musl-tools or gcc"),
    ]


def _qemu_package(arch: str) -> str:
    return "qemu-system-x86" if arch == "x86_64" else "qemu-system-arm"


def _compiler(arch: str) -> str:
    try:
        return os.path.basename(find_compiler(arch))
    except (HostError, UsageError):
        return "musl-gcc"


def probe(tool: Tool) -> ToolStatus:
    path = shutil.which(tool.name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if path is None:
        return ToolStatus(tool=tool, path=None, version=None)
    try:
        res = subprocess.run(
            [path, *tool.version_args], capture_output=True, text=True, timeout=10, check=False
        )
        lines = (res.stdout + res.stderr).strip().splitlines()
        version = lines[0].strip() if lines else "(printed no version)"
    except (OSError, subprocess.TimeoutExpired) as err:
        version = f"(does not run: {err})"
    return ToolStatus(tool=tool, path=path, version=version)


def probe_all(arch: str | None = None) -> list[ToolStatus]:
    return [probe(t) for t in tools(arch or host_arch())]
