"""The libkrun engine: the same machine as QEMU's, run in a dedicated child process (run stage).

Process model (design.md §2: `krun_start_enter` never returns once the guest runs and
`_exit`s with the guest's code, flushing nothing). The launcher forks:

- the child configures a libkrun context (`configure`) and calls `krun_start_enter`; it
  becomes the VMM. It writes one status line to a pipe first: `R` right before entering,
  or `E<code> <message>` when configuration or the entry itself fails, then `_exit(code)`.
  Its stdio goes to `krun.log` in the run directory, so libkrun never touches the user's
  terminal, and it dies with the launcher (PR_SET_PDEATHSIG) in its own process group
  (Ctrl-C reaches the launcher, which forwards it to the guest program).
- the parent keeps the host end of the agent channel (a socketpair whose other end is the
  guest's `smolpack.agent` console port), runs the agent session, writes the program's
  output unbuffered with os.write, and exits with the EXIT code the agent reports; it reaps
  the child in `close()`. Nothing the guest printed is lost to the child's `_exit`.

Machine (must equal the build VM's, or a saved state cannot restore): vCPUs and RAM from
the manifest; root disk = a fresh qcow2 overlay over the read-only base, remounted as root
by libkrun's init, which then execs the agent; hvc0 console → console.log (bounded, by a
`ConsoleRecorder`); the agent's named port; vsock (TSI) only when the machine has network,
with the egress allow lists.
Stdlib only (the launcher imports this lazily, only when it picked krun).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from smolpack.engine.console import panic_message
from smolpack.engine.console_log import ConsoleRecorder, read_tail
from smolpack.engine.qemu import AGENT_GUEST_PATH, AGENT_PORT_NAME
from smolpack.errors import EngineError, HostError, SmolpackError
from smolpack.host import KvmStatus, hypervisor_status
from smolpack.runtime_libs import RuntimeLibs

# libkrun's log level in the VMM process (its stderr is krun.log): info says how a guest
# ended (a CPU shutdown, a reset), which explains a VM that stops with code 0 and a silent
# console; a run logs a few lines (measured in the lane: 2-4 per run).
LOG_LEVEL_INFO = 3
# libkrun's info line for a VM exit -> what it means for the guest (`exit_detail`)
_KVM_EXITS = {
    "KVM_EXIT_SHUTDOWN": "its CPU shut down: a triple fault, a guest kernel crash too early"
    " or too broken to print a panic",
    "KVM_SYSTEM_EVENT_RESET": "the guest reset itself",
    "KVM_SYSTEM_EVENT_SHUTDOWN": "the guest powered off",
}
_log_level_set = False  # in this process (a forked VMM inherits it with the logger)
STATUS_TIMEOUT_S = 30.0  # configuring a context takes ~5 ms; loading libkrun ~20 ms
FORKABLE_ENV = "SMOLVM_FORKABLE"  # libkrun maps a snapshot's memory fd lazily only with =1
VMM_NAME = b"smolpack-vmm"  # the VMM child's process name (/proc/PID/comm)


@dataclass(frozen=True, slots=True, kw_only=True)
class KrunSpec:
    """Everything that shapes the libkrun VM; equal for save and restore (but the state)."""

    cpus: int  # vCPUs
    memory_mib: int  # guest RAM
    base_disk: Path  # raw ext4 image, absolute; never written
    overlay: Path  # qcow2 overlay to create over it; every write lands there
    console_log: Path  # hvc0 output
    net: bool = False  # vsock with TSI (guest sockets become host sockets)
    allow_hosts: tuple[str, ...] = ()  # egress allow list: host names
    allow_cidrs: tuple[str, ...] = ()  # egress allow list: networks
    dns_resolvers: tuple[str, ...] = ()  # trusted resolvers for allow_hosts
    control_socket: Path | None = None  # build VMs: where libkrun listens for SAVE
    snapshot_dir: Path | None = None  # restore: checkpoint.bin + manifest.bin (+ memory.bin)
    memory_file: Path | None = None  # restore: guest memory image, opened read-only
    env: dict[str, str] = field(default_factory=dict)  # extra process environment (child)


def require_hypervisor(flag: str = "--smol-engine", status: KvmStatus | None = None) -> None:
    """One-line HostError unless a libkrun guest can run here (before touching libkrun)."""
    status = hypervisor_status() if status is None else status
    if not status.usable:
        raise HostError(
            f"hardware virtualization unavailable: {status.reason}", hint=f"use {flag}=qemu"
        )


def configure(lib: object, spec: KrunSpec, agent_fd: int, console_fd: int | None = None) -> int:
    """Create and configure a libkrun context for `spec`; return its id. Child side.

    `console_fd`: where hvc0 goes (a `ConsoleRecorder`'s socket); None: `spec.console_log`."""
    from smolpack.engine.krun_ffi import (
        DISK_FORMAT_QCOW2,
        DISK_FORMAT_RAW,
        SNAPSHOT_MEMORY_IMMUTABLE,
        TSI_HIJACK_INET,
        KrunLib,
        cstr,
        cstr_array,
    )

    assert isinstance(lib, KrunLib)

    def c(text: str | os.PathLike[str]) -> bytes:  # held: libkrun may keep the pointer
        return lib.hold(cstr(text))

    def carr(items: tuple[str, ...] | list[str]) -> object:
        return lib.hold(cstr_array(items))

    if not spec.base_disk.is_absolute():
        raise EngineError(f"the base disk path must be absolute: {spec.base_disk}")
    global _log_level_set
    if not _log_level_set:  # libkrun aborts the process when its logger is set up twice
        lib.call("krun_set_log_level", LOG_LEVEL_INFO)
        _log_level_set = True
    lib.call("krun_create_disk_overlay", c(spec.overlay), c(spec.base_disk), DISK_FORMAT_RAW)
    ctx = lib.call("krun_create_ctx")
    lib.call("krun_set_vm_config", ctx, spec.cpus, spec.memory_mib)
    lib.call("krun_add_disk2", ctx, b"root", c(spec.overlay), DISK_FORMAT_QCOW2, False)
    lib.call("krun_set_root_disk_remount", ctx, b"/dev/vda", b"ext4", None)
    # hvc0: the console log. Its fds stay open for the VM's life (this process's life).
    null = os.open(os.devnull, os.O_RDONLY)
    if console_fd is None:
        log = os.open(spec.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    else:
        log = console_fd
    lib.call("krun_add_virtio_console_default", ctx, null, log, log)
    lib.call("krun_set_kernel_console", ctx, b"hvc0")
    console = lib.call("krun_add_virtio_console_multiport", ctx)
    lib.call("krun_add_console_port_inout", ctx, console, c(AGENT_PORT_NAME), agent_fd, agent_fd)
    if spec.net:
        lib.call("krun_add_vsock", ctx, TSI_HIJACK_INET)
        if spec.allow_hosts or spec.allow_cidrs:
            lib.call(
                "krun_set_egress_policy",
                ctx,
                carr(spec.allow_cidrs) if spec.allow_cidrs else None,
                carr(spec.allow_hosts) if spec.allow_hosts else None,
                carr(spec.dns_resolvers) if spec.allow_hosts else None,
            )
    # libkrun's init mounts the root disk, then execs the agent with no arguments. An empty
    # (not NULL) environment: NULL would copy this whole process's environment into the
    # guest kernel's command line. The agent gets env/cwd with every RUN request instead.
    lib.call("krun_set_exec", ctx, c(AGENT_GUEST_PATH), carr([]), carr([]))
    lib.call("krun_set_workdir", ctx, b"/")
    if spec.control_socket is not None:
        lib.call("krun_set_control_socket", ctx, c(spec.control_socket))
    if spec.snapshot_dir is not None:
        lib.call("krun_set_snapshot", ctx, c(spec.snapshot_dir))
        if spec.memory_file is not None:
            fd = os.open(spec.memory_file, os.O_RDONLY)  # kept open: libkrun maps it
            lib.call("krun_set_snapshot_memory_fd2", ctx, fd, SNAPSHOT_MEMORY_IMMUTABLE)
    return ctx


def child_main(
    libs: RuntimeLibs,
    spec: KrunSpec,
    agent_fd: int,
    status_fd: int,
    *,
    flag: str = "--smol-engine",
    status: KvmStatus | None = None,
    console_fd: int | None = None,
) -> NoReturn:
    """The VMM process: configure, report `R`, enter. Never returns; never raises."""
    code = 121
    try:
        from smolpack.engine.krun_ffi import KrunLib

        lib = KrunLib(libs)
        ctx = configure(lib, spec, agent_fd, console_fd)
        os.environ.update(spec.env)
        if spec.memory_file is not None:
            os.environ[FORKABLE_ENV] = "1"
        # Last check before entering: on kvm_pvm a guest would crawl for ~13 s and die with
        # KVM_EXIT_INTERNAL_ERROR (design.md §2); say why at once instead.
        require_hypervisor(flag, status)
        os.write(status_fd, b"R\n")
        lib.call("krun_start_enter", ctx)  # returns only on failure, as a KrunError
        raise EngineError("krun_start_enter returned without an error")
    except SmolpackError as err:
        from smolpack.errors import launcher_exit_code

        code = launcher_exit_code(err)
        message = err.message
    except BaseException as exc:  # noqa: BLE001 - the child must never unwind into the parent
        message = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        os.write(status_fd, f"E{code} {message}".replace("\n", " ").encode() + b"\n")
    os._exit(code)


class KrunVm:
    """A libkrun VMM in a child process, with the host end of the agent channel."""

    def __init__(self, libs: RuntimeLibs, spec: KrunSpec, *, flag: str = "--smol-engine") -> None:
        self.console_log = spec.console_log
        self.log = spec.console_log.with_name("krun.log")
        self.status: int | None = None  # waitpid status once reaped
        # The guest console and libkrun's own output both grow for as long as the VM runs:
        # each goes through a socket into a bounded log, as QEMU's console does.
        self._console = ConsoleRecorder(self.console_log)
        self._vmm_log = ConsoleRecorder(self.log)
        ours, theirs = socket.socketpair()
        status_r, status_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is its exit status
            try:
                ours.close()
                os.close(status_r)
                _become_vmm_process(self._vmm_log.engine_fd())
            finally:
                child_main(libs, spec, theirs.detach(), status_w, flag=flag,
                           console_fd=self._console.engine_fd())  # fmt: skip
        self.pid = pid
        self.agent = ours
        theirs.close()
        os.close(status_w)
        self._console.started()
        self._vmm_log.started()
        try:
            line = _read_status(status_r, STATUS_TIMEOUT_S)
        except BaseException:  # e.g. Ctrl-C while the child configures: it must not linger
            self.close()
            raise
        finally:
            os.close(status_r)
        if line != "R":
            self.close()
            raise _status_error(line, self.exit_detail())

    def alive(self) -> bool:
        self._poll()
        return self.status is None

    def _poll(self, block: bool = False) -> None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid == self.pid:
                self.status = status

    def exit_detail(self) -> str:
        """How the VMM process ended, and the last line it logged ('' while it runs)."""
        self._poll()
        if self.status is None:
            return ""
        if os.WIFSIGNALED(self.status):
            how = f"the libkrun VM process was killed by {_signal_name(os.WTERMSIG(self.status))}"
        else:
            code = os.waitstatus_to_exitcode(self.status)
            how = f"the libkrun VM process exited with code {code}"
        # Its tail only: libkrun's log grows with the VM's life (console_log.read_tail).
        lines = read_tail(self.log).decode(errors="replace").strip().splitlines()
        for line in reversed(lines[-20:]):  # the exit is logged just before "stopping"
            for event, meaning in _KVM_EXITS.items():
                if f"Received {event}" in line:
                    return f"{how}: {meaning}"
        # the last line that says something: a warning, an error, or not libkrun's log at all
        said = [line for line in lines if not _chatter(line)]
        return how + (f" ({said[-1][:200]})" if said else "")

    def stop_reason(self, wait_s: float = 0.0) -> str | None:
        """Why the VMM process has ended (waiting up to wait_s for it), or None while it runs."""
        deadline = time.monotonic() + wait_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.status is None:
            return None
        panic = panic_message(self.console_log)
        if panic is not None:
            return f"guest kernel panic: {panic}"
        return self.exit_detail()

    def close(self) -> None:
        """Stop the VMM for sure and reap it (idempotent)."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._poll(block=True)
        self.agent.close()
        for recorder in (self._console, self._vmm_log):
            recorder.drain()  # the child is gone: its last lines are in by now

    def __enter__(self) -> KrunVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chatter(line: str) -> bool:
    """A libkrun log line below warning: `[2026-12-02T09:20:24Z INFO  krun_vmm] ...`."""
    return line.startswith("[") and line.split(" ", 2)[1:2] in (["INFO"], ["DEBUG"], ["TRACE"])


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _become_vmm_process(log_fd: int) -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        libc.prctl(15, VMM_NAME, 0, 0, 0)  # PR_SET_NAME: `ps` tells the VMM from the launcher
    os.setpgid(0, 0)
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
        signal.signal(signo, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)


def _read_status(fd: int, timeout_s: float) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return f"E121 the libkrun VM process did not report within {timeout_s:g} s"
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def _status_error(line: str, detail: str) -> SmolpackError:
    code_text, _, message = line[1:].partition(" ")
    if not line.startswith("E") or not code_text.isdigit():
        return EngineError(f"the libkrun VM process failed to start: {detail or 'no report'}")
    if int(code_text) == 120:
        problem, _, hint = message.partition("; ")
        return HostError(problem, hint=hint or None)
    return EngineError(message)
