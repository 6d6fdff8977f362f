"""Which engine runs a pack on this host, and from which saved state (run stage).

`plan_run` is the one decision both `smolpack run` and the launcher stub make before they
touch a hypervisor; `--smol-info` prints its `reason`, and `smolpack doctor` asks the same
planner about a guest of the host's architecture. Engines are found by name in
`engine.registry`, each answering for itself (`engine.Engine`): whether it can run the guest
here and why, which states it can restore, its settings. Rules (issue "One file users just
run", §3; design.md §3 "run"):

- `auto`: krun whenever it can run here (hardware virtualization works, libkrun is
  available, the guest has the host's architecture), restoring its state for this host if
  the pack has one and booting cold otherwise: a cold boot on hardware virtualization beats
  restoring under QEMU's software emulation, which then runs every instruction emulated.
  Otherwise QEMU, restoring its state when there is one.
  (In general: the first engine of the registry that can run here.)
- `krun` / `qemu` forced: that engine or a one-line `HostError` saying why not and what to
  use instead. Never a silent fallback to the other engine.
- `cold`, or no compatible state: boot instead of restoring.

Pure: every host fact is a parameter (`HostFacts`), so tests pin any host.
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from smolpack.engine import registry
from smolpack.errors import HostError, UsageError
from smolpack.host import KvmStatus
from smolpack.payload.manifest import StateRef

if TYPE_CHECKING:
    from smolpack.engine.interface import Engine
    from smolpack.payload import Payload

LAUNCHER_FLAG = "--smol-engine"  # a packed tool's option
CLI_FLAG = "--engine"  # `smolpack run`'s option


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What the host offers; gathered by `smolpack.host` / `smolpack.runtime_libs`."""

    arch: str  # "x86_64" / "aarch64"
    os: str  # "linux" / "macos"
    hypervisor: KvmStatus  # hardware virtualization usable, and why (not)
    libkrun: str | None  # where libkrun comes from ("smolmachines", "payload"...), None: absent
    qemu: str | None  # path of qemu-system-<guest arch>, None: not installed


class Guest(Protocol):
    """What the planner needs of a pack: a `Manifest`, or `doctor`'s stand-in."""

    @property
    def guest_arch(self) -> str: ...
    @property
    def states(self) -> tuple[StateRef, ...]: ...


@dataclass(frozen=True, slots=True)
class BareGuest:
    """A guest of `guest_arch` with no saved state: what `doctor` and a build ask about."""

    guest_arch: str
    states: tuple[StateRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EnginePlan:
    """The decision: engine, QEMU accelerator, state to restore, and why."""

    engine: str  # its name in the registry
    accel: str | None  # QEMU -accel value ("tcg", "kvm", "hvf"); None for krun
    qemu: str | None  # qemu-system-<arch> binary for the QEMU engine; None for krun
    state: StateRef | None  # the saved state to restore; None means a cold boot
    reason: str  # one line, e.g. "qemu (tcg), restoring qemu-x86_64: hardware ..."
    flag: str = LAUNCHER_FLAG  # the front end's engine option, named in hints
    label: str = ""  # the engine as reasons show it, e.g. "qemu (tcg)"
    why: str = ""  # why this engine, e.g. "hardware virtualization unavailable: ..."

    @property
    def restores(self) -> bool:
        return self.state is not None


class NoEngine(HostError):
    """No engine can run the guest here; `whys` says why not, engine by engine."""

    def __init__(self, whys: list[str], *, prefix: str = "no engine can run this pack") -> None:
        super().__init__(f"{prefix}: {'; '.join(whys)}", hint=registry.NO_ENGINE_HINT)
        self.whys = whys


def plan_run(
    manifest: Guest,
    facts: HostFacts,
    *,
    requested: str,
    cold: bool,
    flag: str = LAUNCHER_FLAG,
) -> EnginePlan:
    """Pick the engine and state for running `manifest` here; HostError if nothing can.

    `flag` is how the caller's front end spells the engine option (`--smol-engine` for a
    packed tool, `--engine` for `smolpack run`): hints name it.
    """
    choices = registry.choices()
    if requested not in choices:
        raise UsageError(f"unknown engine {requested!r} (use {registry.spelled(choices)})")
    arch = manifest.guest_arch
    if requested != registry.AUTO:
        engine = registry.load(requested)
        ok, why = engine.usable(arch, facts)
        if not ok:
            raise engine.refusal(arch, why, flag)
        return _plan(engine, manifest, facts, "requested", cold, flag)
    skipped: list[str] = []
    for name in registry.names():
        engine = registry.load(name)
        ok, why = engine.usable(arch, facts)
        if ok:
            # Why this one: its own word when it is the first choice, else why not the others.
            return _plan(engine, manifest, facts, "; ".join(skipped) or why, cold, flag)
        skipped.append(why)
    raise NoEngine(skipped)


def cold_instead(plan: EnginePlan, manifest: Guest, facts: HostFacts, blocker: str) -> EnginePlan:
    """What a run does when `plan`'s state cannot restore here: the same engine, booting cold.

    `blocker` is the engine's one clause why (`Engine.restore_blocker`, which reads the pack
    and this host, so it is not asked here); the reason says so.
    """
    assert plan.state is not None
    not_restoring = f"not restoring {plan.state.name}: {blocker}"
    engine = registry.load(plan.engine)
    return _plan(engine, manifest, facts, plan.why, True, plan.flag, not_restoring)


def settle_plan(
    plan: EnginePlan,
    manifest: Guest,
    facts: HostFacts,
    payload: Payload,
    damaged: str | None = None,
) -> tuple[EnginePlan, str | None]:
    """`plan`, or the cold boot a run really does when its state is known not to restore here
    (`damaged`: the state's sections failed verification; else the engine's
    `restore_blocker`, which reads the pack: the one step here beyond the parameters), and
    why (None: `plan` stands). A run and `--smol-info` both ask this."""
    if plan.state is None:
        return plan, None
    why = damaged or registry.load(plan.engine).restore_blocker(plan, payload)
    if why is None:
        return plan, None
    return cold_instead(plan, manifest, facts, why), why


def _plan(
    engine: Engine,
    manifest: Guest,
    facts: HostFacts,
    why: str,
    cold: bool,
    flag: str,
    not_restoring: str = "",
) -> EnginePlan:
    state = None if cold else _state_for(engine, manifest, facts)
    label, accel, binary = engine.setup(manifest.guest_arch, facts, state)
    return EnginePlan(
        engine=engine.name,
        accel=accel,
        qemu=binary,
        state=state,
        reason=_reason(label, state, why, cold, not_restoring),
        flag=flag,
        label=label,
        why=why,
    )


def _state_for(engine: Engine, manifest: Guest, facts: HostFacts) -> StateRef | None:
    """The first state of `engine` this host can restore (states are listed best first)."""
    for state in manifest.states:
        if state.engine == engine.name and engine.restorable(state, manifest.guest_arch, facts):
            return state
    return None


def _reason(label: str, state: StateRef | None, why: str, cold: bool, not_restoring: str) -> str:
    if state is not None:
        how = f"restoring {state.name}"
    elif not_restoring:
        how = f"cold boot ({not_restoring})"
    elif cold:
        how = "cold boot (requested)"
    else:
        how = "cold boot (no saved state for this engine and host)"
    return f"{label}, {how}: {why}"
