"""The build VM's agent session, whichever engine runs it (create stage; `Engine.build_state`).

Handshake with the freshly booted agent, run the Smolfile's `init` steps streaming their
output, show the console when a build fails, and `qemu-img` (every engine flattens its
overlay with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import deque

from smolpack.agent.channels import ChannelHub
from smolpack.agent.session import AgentSession, handshake
from smolpack.engine.console import console_tail, explain_agent_failure
from smolpack.engine.interface import Vm
from smolpack.errors import AgentError, BuildError, HostError
from smolpack.hostdir.server import HostDir
from smolpack.machine import MachineConfig
from smolpack.progress import Progress
from smolpack.smolfile import SmolConfig

BOOT_TIMEOUT_S = 120.0  # a cold boot under TCG takes ~3 s; leave room for a loaded CI box


def boot_handshake(vm: Vm, timeout_s: float) -> AgentSession:
    """Handshake with the freshly booted agent; a timeout says what the console showed."""
    try:
        return handshake(vm.agent, timeout_s=timeout_s)
    except AgentError as exc:
        raise explain_agent_failure(vm, exc) from exc


def run_init_step(
    session: AgentSession, number: int, step: str, machine: MachineConfig, config: SmolConfig
) -> None:
    """Run one `init` step, streaming its output to stderr and keeping the last lines.

    The Smolfile's `volumes` are mounted for the step (FUSE over the agent channel; the
    agent unmounts them at the step's EXIT), so none is mounted when the state is saved and
    nothing of them is carried in the pack unless a step copied it.
    """
    read_fd, write_fd = os.pipe()
    tail: deque[bytes] = deque(maxlen=5)

    def tee() -> None:
        pending = b""
        while chunk := os.read(read_fd, 65536):
            os.write(2, chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            tail.extend(line for line in lines if line.strip())
        if pending.strip():
            tail.append(pending)

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    mounts = [(HostDir(str(v.host_path), read_only=v.read_only), v.guest_path) for v in
              sorted(config.volumes, key=lambda v: v.guest_path)]  # fmt: skip
    try:
        code = session.run_build_step(
            ["/bin/sh", "-c", step],
            env=machine.env,
            cwd=machine.workdir,
            stdout_fd=write_fd,
            stderr_fd=write_fd,
            channels=ChannelHub([], None, mounts) if mounts else None,
        )
    finally:
        for hostdir, _path in mounts:
            hostdir.close()
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    if code != 0:
        last = " | ".join(line.decode(errors="replace").strip() for line in tail)
        raise BuildError(
            f"init step {number} failed with exit code {code}: {step}"
            + (f" (last output: {last})" if last else "")
        )


def keep_console(vm: Vm, progress: Progress) -> None:
    lines = console_tail(vm.console_log, 15)
    if lines:
        progress.note("last lines of the build VM console:")
        for line in lines:
            progress.note(f"  {line}")


def qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        raise HostError("qemu-img not found", hint="install it: apt-get install qemu-utils")
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise HostError(f"qemu-img {args[0]} failed: {res.stderr.strip().splitlines()[-1:]}")
