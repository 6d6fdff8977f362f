"""run: payload → engine → agent → exit code (design.md §3, "run").

`run_payload` is the whole run path, shared by `smolpack run` and the launcher
stub, so it imports only what a run needs (stdlib, payload reader, engine,
agent session, cache). Steps, top to bottom:

1. open the payload (header + index checks only: cost independent of size);
2. check that this host can run it and pick the engine and state (`engine.select`);
3. have that engine (`engine.registry`) restore the saved state, or cold boot when asked or
   when there is none, materializing what must be a file into the content cache;
4. handshake with the agent, send RUN, pump stdio (and the run's forwarded ports, ssh-agent
   and host directories, `host_resources`, loaded only for a run that has any) until EXIT;
5. stop the VM and remove the per-run directory, on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smolpack.agent import protocol as p
from smolpack.agent.session import AgentSession, handshake
from smolpack.engine import registry
from smolpack.engine.console import console_tail, explain_agent_failure
from smolpack.engine.interface import Vm
from smolpack.engine.select import EnginePlan, HostFacts, plan_run, settle_plan
from smolpack.errors import AgentError, EngineError, HostError, Interrupted
from smolpack.host import host_arch, host_os, host_target, hypervisor_status
from smolpack.integrity import ensure_verified
from smolpack.machine import MachineConfig, terminal_env
from smolpack.payload import Payload, open_payload
from smolpack.run_files import private_run_dir
from smolpack.stages import StageClock

TYPE_CHECKING = False  # typing's costs an import; mypy takes any TYPE_CHECKING as true
if TYPE_CHECKING:
    from smolpack.agent.channels import ChannelHub, PortForward
    from smolpack.host_resources import Attachments, HostVolume

RESTORE_HANDSHAKE_S = 30.0  # a restored agent answers in ~10 ms; slack for loaded machines
BOOT_HANDSHAKE_S = 120.0  # a cold boot under TCG takes ~3 s


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    engine: str = "auto"  # "auto" | "qemu" | "krun"
    cold: bool = False  # boot instead of restoring the saved state
    debug: bool = False  # keep the console log, print timings on stderr
    engine_flag: str = "--smol-engine"  # how this front end spells the engine option (hints)
    flag_prefix: str = "--smol-"  # how this front end spells its other options (errors)
    ports: tuple[PortForward, ...] = ()  # extra forwards for this run (--smol-port)
    ssh_agent: bool = False  # forward the host's ssh-agent (--smol-ssh-agent)
    unfiltered_egress: bool = False  # run a pack with allow lists under QEMU anyway
    volumes: tuple[HostVolume, ...] = ()  # host directories for this run (--smol-volume)
    cwd_mode: str | None = None  # "off" | "ro" | "rw" (--smol-cwd); None: the pack's host_cwd


def run_payload(path: str | Path, args: list[str], options: RunOptions) -> int:
    """Run the pack at `path` with `args`; return the guest program's exit code."""
    # Signals are ours for the whole run, from the first read of the pack (verifying a big
    # one takes seconds) until the run dir is gone: SIGTERM's default action would end the
    # process without unwinding, leaving QEMU's files (and a frozen launcher's) in place.
    with _Interrupts() as interrupts:
        return _run_payload(path, args, options, interrupts)


def _run_payload(
    path: str | Path, args: list[str], options: RunOptions, interrupts: _Interrupts
) -> int:
    clock = StageClock()
    payload = open_payload(path)
    try:
        # Every section is hashed once per file version before anything trusts it.
        verified = ensure_verified(payload)
        clock.mark("verify")
        manifest = payload.manifest()
        machine = MachineConfig.from_dict(manifest.machine, label=str(path))
        facts = host_facts(payload)

        def planned(*, cold: bool) -> EnginePlan:
            return plan_run(
                manifest, facts, requested=options.engine, cold=cold, flag=options.engine_flag
            )

        plan = planned(cold=options.cold)
        # A state known not to restore here (damaged, another CPU, another QEMU) boots cold
        # now, so --debug's engine line says what will really run.
        damaged = verified.damaged_states.get(plan.state.name) if plan.state else None
        settled, why = settle_plan(plan, manifest, facts, payload, damaged)
        if why is not None:
            _cold_note(plan, why)
        plan = settled
        if options.debug:
            print(f"smolpack: engine {plan.reason}", file=sys.stderr)
        _check_egress(machine, plan, options)
        # Read on this host now, before any VM exists: a missing one is one line.
        secret_env = _secrets(machine)
        clock.mark("plan")
        with (
            _attach(machine, options) as attached,
            private_run_dir(keep=options.debug) as run_dir,
        ):
            plan, vm, session = _start(plan, lambda: planned(cold=True), payload, machine,
                                       run_dir, clock, debug=options.debug)  # fmt: skip
            try:
                try:
                    with session:
                        hub = attached.hub(session.protocol_version) if attached else None
                        extra_env = secret_env + (attached.env() if attached else [])
                        env = _merge_env(machine.env, extra_env) if extra_env else machine.env
                        cwd = (attached.cwd if attached else None) or machine.workdir
                        code = _run(session, machine, env, cwd, args, interrupts, hub)
                    clock.mark("program")
                except AgentError as err:
                    raise explain_agent_failure(vm, err) from err
            except BaseException:
                if options.debug:
                    _show_console(vm)
                raise
            finally:
                vm.close()
        clock.mark("teardown")
        if options.debug:
            how = "restore" if plan.restores else "cold boot"
            print(f"smolpack: {plan.engine} {how}", file=sys.stderr)
            print(clock.line(), file=sys.stderr)
        return code
    finally:
        payload.close()


def _check_egress(machine: MachineConfig, plan: EnginePlan, options: RunOptions) -> None:
    """Refuse a run of a pack with egress allow lists under an engine that cannot enforce
    them, unless the user accepted unfiltered egress for this run."""
    if options.unfiltered_egress or not (machine.allow_hosts or machine.allow_cidrs):
        return
    engine = registry.load(plan.engine)
    if engine.filters_egress:
        return
    raise HostError(
        f"this pack limits network egress to allow lists, which the {engine.title} engine"
        f" cannot enforce; pass {options.flag_prefix}allow-unfiltered-egress to run it with"
        " unfiltered egress"
    )


def _secrets(machine: MachineConfig) -> list[str]:
    if not machine.secrets:
        return []  # host_resources (and what it imports) only for a run that uses it
    from smolpack.host_resources import resolve_secrets

    return resolve_secrets(machine, os.environ)


def _merge_env(base: tuple[str, ...], extra: list[str]) -> tuple[str, ...]:
    from smolpack.host_resources import merge_env

    return merge_env(base, extra)


def _attach(machine: MachineConfig, options: RunOptions) -> contextlib.AbstractContextManager[
    Attachments | None
]:  # fmt: skip
    """The run's ports, ssh-agent and host directories, bound now; None when it has none."""
    wanted = (
        options.ports or options.ssh_agent or options.volumes or machine.ports
        or machine.ssh_agent or (options.cwd_mode or machine.host_cwd) != "off"
    )  # fmt: skip
    if not wanted:
        return contextlib.nullcontext()
    from smolpack.host_resources import attach

    return attach(machine, options.ports, options.ssh_agent, options.flag_prefix,
                  options.volumes, options.cwd_mode)  # fmt: skip


def _start(
    plan: EnginePlan,
    cold_plan: Callable[[], EnginePlan],
    payload: Payload,
    machine: MachineConfig,
    run_dir: Path,
    clock: StageClock,
    *,
    debug: bool,
) -> tuple[EnginePlan, Vm, AgentSession]:
    """Start the VM `plan` says and greet its agent; a restore that fails (a stream QEMU
    refuses, an agent that never answers) becomes a cold boot of the same pack, with one
    line on stderr. Nothing of the program has run at that point: RUN is only sent once the
    agent has answered."""
    if plan.state is None:
        return (plan, *_start_greeted(plan, payload, machine, run_dir, clock, debug=debug))
    try:
        return (plan, *_start_greeted(plan, payload, machine, run_dir, clock, debug=debug))
    except (EngineError, AgentError) as err:  # VmStopped is an EngineError
        why = f"restoring it failed: {err}"
    _cold_note(plan, why)
    cold = cold_plan()
    cold_dir = run_dir / "cold"  # the failed attempt's files stay apart (and go with run_dir)
    cold_dir.mkdir(mode=0o700)
    return (cold, *_start_greeted(cold, payload, machine, cold_dir, clock, debug=debug))


def _cold_note(plan: EnginePlan, why: str) -> None:
    assert plan.state is not None
    print(f"smolpack: not restoring {plan.state.name} ({why}); booting cold", file=sys.stderr)


def _start_greeted(
    plan: EnginePlan, payload: Payload, machine: MachineConfig, run_dir: Path,
    clock: StageClock, *, debug: bool,
) -> tuple[Vm, AgentSession]:  # fmt: skip
    vm = registry.load(plan.engine).start(plan, payload, machine, run_dir, clock)
    try:
        wait = RESTORE_HANDSHAKE_S if plan.restores else BOOT_HANDSHAKE_S
        try:
            session = handshake(vm.agent, wait)
            clock.mark("handshake")
            return vm, session
        except AgentError as err:
            raise explain_agent_failure(vm, err) from err
    except BaseException:
        if debug:
            _show_console(vm)
        vm.close()
        raise


def host_facts(payload: Payload) -> HostFacts:
    """What this host offers for running `payload` (cheap: a few file reads)."""
    return local_facts(payload.manifest().guest_arch, _libkrun_source(payload))


def local_facts(guest_arch: str, libkrun: str | None) -> HostFacts:
    """What this host offers for a `guest_arch` guest, libkrun coming from `libkrun`."""
    return HostFacts(
        arch=host_arch(),
        os=host_os(),
        hypervisor=hypervisor_status(),
        libkrun=libkrun,
        qemu=shutil.which(f"qemu-system-{guest_arch}"),
    )


def installed_libkrun() -> str | None:
    """Where this host's libkrun comes from ("smolmachines", "env"...), None: absent."""
    from smolpack.runtime_libs import find_runtime_libs

    try:
        return find_runtime_libs().source
    except HostError:
        return None


def _libkrun_source(payload: Payload) -> str | None:
    """ "payload" when the pack carries this host's libkrun, else where it is installed."""
    from smolpack.pack_libs import has_host_libs

    if has_host_libs(payload, host_target()):
        return "payload"
    return installed_libkrun()


def _run(
    session: AgentSession,
    machine: MachineConfig,
    env: tuple[str, ...],
    cwd: str,
    args: list[str],
    interrupts: _Interrupts,
    hub: ChannelHub | None,
) -> int:
    tty = os.isatty(0) and os.isatty(1)
    rows, cols = _window_size() if tty else (0, 0)
    request = p.RunRequest(
        argv=machine.argv(args),
        env=terminal_env(env, os.environ, machine.locales) if tty else env,
        cwd=cwd,
        tty=tty,
        power_off=True,
        tty_rows=rows,
        tty_cols=cols,
        realtime_ns=time.time_ns(),
        entropy=os.urandom(64),
        ssh_agent=hub is not None and hub.ssh_agent,
    )
    with interrupts.forwarding_to(session), _resizes(session, tty), _raw_terminal(tty):
        return session.run(request, stdin_fd=0, stdout_fd=1, stderr_fd=2, channels=hub)


def _window_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(1)
    except OSError:
        return 0, 0
    return size.lines, size.columns


# A frozen launcher (PyInstaller onefile) is two processes: the bootloader forwards every
# signal it gets to the Python child, and a terminal's Ctrl-C reaches both of them, so one
# keypress can arrive twice a few ms apart. SIGINTs closer than this count as one.
SIGINT_DEBOUNCE_S = 0.3
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupts:
    """SIGINT, SIGTERM and SIGHUP over a whole run (formats/exit-codes.md, "Signals").

    - Before the guest program runs (restore, boot, handshake): the signal aborts at once.
    - While it runs: the first one goes to the program's process group in the guest, and
      its exit status comes back as usual (130 for a program that dies of SIGINT). Any
      later one aborts, so a program that ignores or traps signals cannot hold the run:
      Ctrl-C twice always ends it.
    - Once the program has exited (cleanup): ignored; the exit code is already known.
    - When our parent has gone (a frozen launcher whose bootloader was SIGKILLed sends us
      SIGTERM through PR_SET_PDEATHSIG: `launcher._follow_bootloader`): abort at once.
    Aborting raises `Interrupted(signo)`: the VM is stopped and the run dir removed on the
    way out, and the process exits 128 + signo.
    """

    def __init__(self) -> None:
        self._parent = os.getppid()
        self._session: AgentSession | None = None
        self._forwarded = False
        self._done = False
        self._last_sigint: float | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        self._old = {s: signal.signal(s, self._handle) for s in INTERRUPTS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signo, handler in self._old.items():
            signal.signal(signo, handler)  # type: ignore[arg-type]

    def _handle(self, signo: int, _frame: object) -> None:
        if self._done:
            return
        if signo == signal.SIGINT:
            now = time.monotonic()
            if self._last_sigint is not None and now - self._last_sigint < SIGINT_DEBOUNCE_S:
                return  # the same Ctrl-C, delivered twice
            self._last_sigint = now
        # Orphaned (a frozen launcher's bootloader was killed): no one waits for the program.
        orphaned = os.getppid() != self._parent
        if self._session is None or self._forwarded or orphaned:
            self._done = True  # a second signal must not interrupt the cleanup
            raise Interrupted(signo)
        self._forwarded = True
        self._session.forward_signal(signo)

    @contextlib.contextmanager
    def forwarding_to(self, session: AgentSession) -> Iterator[None]:
        """Forward the first signal to the program run through `session`."""
        self._session = session
        try:
            yield
        finally:
            self._session = None
            self._done = True


@contextlib.contextmanager
def _resizes(session: AgentSession, tty: bool) -> Iterator[None]:
    """In tty mode, pass the terminal's size changes on to the guest's pty."""
    if not tty:
        yield
        return

    def resize(_signo: int, _frame: object) -> None:
        session.resize(*_window_size())

    old = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


@contextlib.contextmanager
def _raw_terminal(tty: bool) -> Iterator[None]:
    if not tty:
        yield
        return
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(0)
    ttymod.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _show_console(vm: Vm) -> None:
    for line in console_tail(vm.console_log, 20):
        print(f"console: {line}", file=sys.stderr)
