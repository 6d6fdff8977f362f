"""The QEMU engine: boot, save and restore a microVM (run stage; design.md §3).

One `QemuVm` is one QEMU process. Its monitor (QMP), the agent's virtio-serial port and the
console are socketpairs handed to QEMU as file descriptors, so a run leaves no socket files
behind; the console is copied into a bounded log in the run dir (`console_log`). A pack's
disk is handed over as the very fd the launcher verified (`RootDisk.fd`, `-add-fd`), and
every path QEMU still parses has its `,` doubled (QEMU's option separator).
QEMU is killed on every exit path (`close()`, and PR_SET_PDEATHSIG if the
launcher itself dies), so no orphan survives Ctrl-C or a crash.

The device model must be identical between the VM that saved a state and the
VM that restores it: `qemu_argv` is the one place that builds it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from smolpack.engine.console import panic_message
from smolpack.engine.console_log import ConsoleRecorder, read_tail
from smolpack.engine.qcow2 import write_empty_qcow2
from smolpack.engine.qmp import QmpClient
from smolpack.errors import EngineError

# pic=on is what gives the guest a timer interrupt. Without a legacy PIC (and with no ACPI
# tables) Linux cannot wire the PIT to IRQ0 ("Failed to register legacy timer interrupt"),
# and the APIC timer then fails its check against jiffies that never advance ("APIC timer
# disabled due to verification failure"). The guest ran with no tick at all: `sleep` never
# returned, and whenever the PIT-based TSC calibration failed (a busy host descheduling the
# TCG vCPU thread: "tsc: Unable to calibrate against PIT") the boot hung for good in
# calibrate_delay().
MACHINE = "microvm,acpi=off,pic=on,pit=on,rtc=off,isa-serial=off"
# "max" under TCG is whatever this QEMU version emulates: recorded with each saved state.
CPU_MODEL = "max"
AGENT_PORT_NAME = "smolpack.agent"
AGENT_GUEST_PATH = "/smolpack/agent"
# panic=-1 makes a panicking guest reboot at once, and -no-reboot turns that
# reboot into a QEMU exit: a crashed guest ends the run instead of hanging it.
KERNEL_CMDLINE = f"console=hvc0 root=/dev/vda rw init={AGENT_GUEST_PATH} panic=-1 reboot=t quiet"


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuMachine:
    """Everything that shapes the guest-visible machine; equal for save and restore."""

    guest_arch: str  # "x86_64" or "aarch64"
    cpus: int  # vCPUs
    memory_mib: int  # guest RAM
    kernel: Path  # PVH ELF kernel (smolpack.kernel)
    cmdline: str = KERNEL_CMDLINE  # kernel command line
    net: bool = False  # attach a user-mode NIC


@dataclass(frozen=True, slots=True, kw_only=True)
class RootDisk:
    """The root disk: a raw ext4 image, possibly a section inside a bigger file."""

    path: Path  # file holding the image (a .raw file, a payload or a packed tool)
    offset: int = 0  # where the image starts in that file
    size: int  # image size in bytes
    overlay: Path  # writable qcow2 over it (see `create_overlay`); all writes go there
    fd: int | None = None  # an fd open read-only on `path`: QEMU reads it, not the path


# QEMU fd set that carries `RootDisk.fd` (-add-fd / /dev/fdset/N); any small number works.
_DISK_FDSET = 1


def _opt(value: object) -> str:
    """A value inside a QEMU `key=value,...` option: `,` is written `,,`."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True, slots=True, kw_only=True)
class RamFile:
    """Guest RAM backed by a file of exactly `memory_mib` (lazy memory, formats/qemu-state.md).

    The build VM maps it shared: the guest writes through to the file, and the migration
    stream leaves the RAM out (x-ignore-shared), so it holds device state only. A run maps
    the same bytes private: QEMU reads no RAM at restore, pages fault in copy-on-write as
    the guest touches them, and the file is never written.
    """

    path: Path  # the RAM file (a run's: the cached memory section)
    shared: bool  # True for the build VM (saves by reference), False for a run (CoW)


RAM_BACKEND_ID = "smolpack.ram"  # the RAM block's name in the migration stream


def ram_file_args(machine: QemuMachine, ram: RamFile) -> list[str]:
    """Arguments that put guest RAM on `ram` (added to `qemu_argv` for lazy-memory states)."""
    path = str(ram.path).replace(",", ",,")  # QEMU's option syntax: ",," is a literal comma
    share = "on" if ram.shared else "off"
    return [
        "-object",
        f"memory-backend-file,id={RAM_BACKEND_ID},size={machine.memory_mib}M,"
        f"mem-path={path},share={share},prealloc=off",
        "-machine",
        f"memory-backend={RAM_BACKEND_ID}",
    ]


def ignore_shared_ram(qmp: QmpClient) -> None:
    """Turn on x-ignore-shared, needed on both ends of a lazy-memory state's stream.

    The saving side then leaves shared RAM out of the stream, and the loading side expects
    it left out (both write/read each RAM block's address in its place). QEMU 7.2 has no
    command-line switch for it, so a restore starts with `-incoming defer` and gets it here
    before `migrate-incoming`.
    """
    caps = [{"capability": "x-ignore-shared", "state": True}]
    qmp.execute("migrate-set-capabilities", {"capabilities": caps})


def qemu_argv(
    machine: QemuMachine,
    disk: RootDisk,
    *,
    binary: str,
    accel: str,
    qmp_fd: int,
    agent_fd: int,
    console_fd: int,
    incoming_fd: int | None,
    ram: RamFile | None = None,
) -> list[str]:
    """The QEMU command line for one VM (the single definition of the device model)."""
    if machine.guest_arch != "x86_64":
        raise EngineError(f"the QEMU engine does not support {machine.guest_arch} guests yet")
    # The base is read in place (offset/size: a section inside the pack), never written;
    # every write lands in the qcow2 overlay above it. The backing link is given here, not
    # taken from the overlay's header, so a run overlay needs no path to the pack in it.
    # Given an fd (a run: the pack the launcher verified), QEMU dup()s it from an fd set
    # instead of opening the path again, which may by now name another file.
    base_name = f"/dev/fdset/{_DISK_FDSET}" if disk.fd is not None else _opt(disk.path)
    base_file = f"driver=file,node-name=base-file,filename={base_name},read-only=on"
    base = (
        f"driver=raw,node-name=base,file=base-file,offset={disk.offset},size={disk.size},"
        "read-only=on"
    )
    top = (
        f"driver=qcow2,node-name=root,file.driver=file,file.filename={_opt(disk.overlay)},"
        "backing=base,cache.no-flush=on"
    )
    argv = [
        binary,
        "-M",
        MACHINE,
        "-accel",
        accel,
        "-cpu",
        CPU_MODEL,
        "-smp",
        str(machine.cpus),
        "-m",
        f"{machine.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(machine.kernel),
        "-append",
        machine.cmdline,
        "-chardev",
        f"socket,id=qmp,fd={qmp_fd}",
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        "virtio-serial-device",
        "-chardev",
        f"socket,id=con,fd={console_fd}",
        "-device",
        "virtconsole,chardev=con",
        "-chardev",
        f"socket,id=agent,fd={agent_fd}",
        "-device",
        f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
        "-blockdev",
        base_file,
        "-blockdev",
        base,
        "-blockdev",
        top,
        "-device",
        "virtio-blk-device,drive=root",
    ]
    if disk.fd is not None:
        argv += ["-add-fd", f"fd={disk.fd},set={_DISK_FDSET}"]
    if machine.net:
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
    if ram is not None:
        argv += ram_file_args(machine, ram)
    if incoming_fd is not None:
        # A lazy-memory restore sets a capability first (`_start_incoming`).
        argv += ["-incoming", "defer" if ram is not None else f"fd:{incoming_fd}"]
    return argv


def create_overlay(path: Path, disk: RootDisk) -> None:
    """Create an empty qcow2 overlay for `disk` (its backing is linked in `qemu_argv`).

    Written directly (smolpack.engine.qcow2): a run needs no qemu-img (Debian's QEMU package
    only recommends qemu-utils), and saves its process start."""
    try:
        write_empty_qcow2(path, disk.size)
    except (OSError, ValueError) as err:
        raise EngineError(f"cannot create the disk overlay {path}: {err}") from None


def _start_incoming(qmp: QmpClient, incoming_fd: int) -> None:
    """Load a lazy-memory state from `incoming_fd` (QEMU's copy of it: same number)."""
    ignore_shared_ram(qmp)
    qmp.execute("migrate-incoming", {"uri": f"fd:{incoming_fd}"})


def _die_with_parent() -> None:
    # Runs in the child before exec: QEMU gets SIGKILL if the launcher dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # Ctrl-C at the terminal must reach the launcher only; it decides what QEMU gets.
    os.setpgid(0, 0)


class QemuVm:
    """A running QEMU process with its monitor and agent channel."""

    def __init__(
        self,
        machine: QemuMachine,
        disk: RootDisk,
        *,
        run_dir: Path,
        accel: str = "tcg",
        incoming_fd: int | None = None,
        binary: str | None = None,
        ram: RamFile | None = None,
    ) -> None:
        self.machine = machine
        self.ram = ram
        self.console_log = run_dir / "console.log"
        self._console = ConsoleRecorder(self.console_log)
        qmp_ours, qmp_theirs = socket.socketpair()
        agent_ours, agent_theirs = socket.socketpair()
        self.agent = agent_ours
        self._qmp_sock = qmp_ours
        argv = qemu_argv(
            machine,
            disk,
            binary=binary or f"qemu-system-{machine.guest_arch}",
            accel=accel,
            qmp_fd=qmp_theirs.fileno(),
            agent_fd=agent_theirs.fileno(),
            console_fd=self._console.engine_fd(),
            incoming_fd=incoming_fd,
            ram=ram,
        )
        pass_fds = [qmp_theirs.fileno(), agent_theirs.fileno(), self._console.engine_fd()]
        pass_fds += [fd for fd in (incoming_fd, disk.fd) if fd is not None]
        self._stderr_path = run_dir / "qemu.stderr"
        try:
            with open(self._stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    pass_fds=pass_fds,
                    preexec_fn=_die_with_parent,
                )
        except FileNotFoundError as exc:
            raise EngineError(f"cannot start {argv[0]}: not found") from exc
        finally:
            qmp_theirs.close()
            agent_theirs.close()
            self._console.started()
        try:
            self.qmp = QmpClient(qmp_ours, timeout_s=30.0)
            if ram is not None and incoming_fd is not None:
                _start_incoming(self.qmp, incoming_fd)
        except (EngineError, OSError) as exc:  # OSError: QEMU exited before its greeting
            self.close()
            raise EngineError(f"QEMU failed to start: {self.failure_detail() or exc}") from exc
        except BaseException:  # Ctrl-C while QEMU starts: it must not outlive us
            self.close()
            raise

    def failure_detail(self) -> str:
        """The last line QEMU printed, to explain a failure in one line."""
        text = read_tail(self._stderr_path, 4096).decode(errors="replace")
        lines = text.strip().splitlines()
        return lines[-1] if lines else ""

    def stop_reason(self, wait_s: float = 0.0) -> str | None:
        """Why QEMU has exited (waiting up to wait_s for it), or None while it runs."""
        try:
            code = self.proc.wait(timeout=wait_s) if wait_s > 0 else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return None
        self._console.drain()  # what the console got out before QEMU exited
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"QEMU was killed by {name}"
        panic = panic_message(self.console_log)
        if panic is not None:
            # panic=-1 reboots at once and -no-reboot turns that into a clean QEMU exit.
            return f"guest kernel panic: {panic}"
        if code == 0:
            # libkrunfw's kernel reboots (no panic, nothing on a quiet console) when PID 1
            # dies, and -no-reboot turns any reboot into this clean exit.
            return "the guest kernel rebooted: the agent (PID 1) died or the program rebooted it"
        detail = self.failure_detail()
        return f"QEMU exited with status {code}" + (f": {detail}" if detail else "")

    def save_state(self, dest: Path, *, timeout_s: float = 300.0) -> None:
        """Pause the guest and write its full state to `dest` (a migration stream).

        The guest stays paused afterwards, so the disk behind it is frozen at the
        same instant as the saved memory.
        """
        self.qmp.execute("stop")
        if self.ram is not None and self.ram.shared:
            ignore_shared_ram(self.qmp)  # the RAM file is saved by reference, not copied
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.qmp.execute("getfd", {"fdname": "state"}, fds=[fd])
        finally:
            os.close(fd)
        self.qmp.execute("migrate", {"uri": "fd:state"})
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.qmp.execute("query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise EngineError(f"saving the VM state failed (migration {status})")
            if time.monotonic() > deadline:
                raise EngineError(f"saving the VM state took longer than {timeout_s:.0f} s")
            time.sleep(0.02)

    def wait_incoming(self, *, timeout_s: float = 60.0) -> None:
        """Wait until a restore from `-incoming` has loaded, then let the guest run."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.qmp.execute("query-status").get("status")
            except OSError as exc:  # QEMU exited: a stream it refused (lazy: after the start)
                self.stop_reason(wait_s=2.0)  # reap it, so its last stderr line is complete
                raise EngineError(f"QEMU failed to start: {self.failure_detail() or exc}") from exc
            if status == "running":
                return
            if status == "paused":
                # The state was saved from a stopped guest, and QEMU restores that run
                # state too: resume it ourselves once the stream is fully loaded.
                self.qmp.execute("cont")
                return
            if status not in ("inmigrate", "prelaunch", "restore-vm"):
                raise EngineError(f"restoring the VM state failed (QEMU status {status!r})")
            if time.monotonic() > deadline:
                raise EngineError(f"restoring the VM state took longer than {timeout_s:.0f} s")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop QEMU for sure (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill -9 does not time out
            pass
        self.agent.close()
        self._qmp_sock.close()
        self._console.drain(1.0)

    def __enter__(self) -> QemuVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
