"""Which engine runs a pack on this host, and from which saved state (run stage).

`plan_run` is the one decision both `smolpack run` and the launcher stub make before they
touch a hypervisor; `--smol-info` and `smolpack doctor` print its `reason`. Rules
(issue "One file users just run", §3; design.md §3 "run"):

- `auto`: krun whenever it can run here (hardware virtualization works, libkrun is
  available, the guest has the host's architecture), restoring its state for this host if
  the pack has one and booting cold otherwise: a cold boot on hardware virtualization beats
  restoring under QEMU's software emulation, which then runs every instruction emulated.
  Otherwise QEMU, restoring its state when there is one.
- `krun` / `qemu` forced: that engine or a one-line `HostError` saying why not and what to
  use instead. Never a silent fallback to the other engine.
- `cold`, or no compatible state: boot instead of restoring.

Pure: every host fact is a parameter (`HostFacts`), so tests pin any host.
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smolpack.errors import HostError, UsageError
from smolpack.host import KvmStatus
from smolpack.payload.manifest import Manifest, StateRef

Engine = Literal["krun", "qemu"]
ENGINE_CHOICES = ("auto", "krun", "qemu")
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


@dataclass(frozen=True, slots=True, kw_only=True)
class EnginePlan:
    """The decision: engine, QEMU accelerator, state to restore, and why."""

    engine: Engine
    accel: str | None  # QEMU -accel value ("tcg", "kvm", "hvf"); None for krun
    qemu: str | None  # qemu-system-<arch> binary for the QEMU engine; None for krun
    state: StateRef | None  # the saved state to restore; None means a cold boot
    reason: str  # one line, e.g. "qemu (tcg), restoring qemu-x86_64: hardware ..."
    flag: str = LAUNCHER_FLAG  # the front end's engine option, named in hints

    @property
    def restores(self) -> bool:
        return self.state is not None


def plan_run(
    manifest: Manifest,
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
    if requested not in ENGINE_CHOICES:
        raise UsageError(f"unknown engine {requested!r} (use auto, krun or qemu)")
    krun_ok, krun_why = _krun_usable(manifest, facts)
    krun_state = None if cold else _state_for(manifest, "krun", facts)
    qemu_state = None if cold else _state_for(manifest, "qemu", facts)

    if requested == "krun":
        if not krun_ok:
            raise HostError(krun_why, hint=f"use {flag}=qemu")
        return _krun_plan(krun_state, "requested", cold, flag)
    if requested == "qemu":
        if facts.qemu is None:
            raise HostError(
                f"qemu-system-{manifest.guest_arch} not found on PATH",
                hint=f"install QEMU or use {flag}=krun",
            )
        return _qemu_plan(manifest, facts, qemu_state, "requested", cold, flag)
    # auto
    if krun_ok:
        return _krun_plan(krun_state, krun_why, cold, flag)
    if facts.qemu is not None:
        return _qemu_plan(manifest, facts, qemu_state, krun_why, cold, flag)
    raise HostError(
        f"no engine can run this pack: {krun_why}; qemu-system-{manifest.guest_arch} not found",
        hint="install QEMU (apt-get install qemu-system-x86) or run on a host with KVM",
    )


def _krun_usable(manifest: Manifest, facts: HostFacts) -> tuple[bool, str]:
    if not facts.hypervisor.usable:
        return False, f"hardware virtualization unavailable: {facts.hypervisor.reason}"
    if manifest.guest_arch != facts.arch:
        return False, f"the guest is {manifest.guest_arch} but this host is {facts.arch}"
    if facts.libkrun is None:
        return False, "libkrun not found"
    return True, facts.hypervisor.reason


def _state_for(manifest: Manifest, engine: Engine, facts: HostFacts) -> StateRef | None:
    """The first state of `engine` this host can restore (states are listed best first)."""
    for state in manifest.states:
        if state.engine != engine:
            continue
        # A krun state holds host-specific vCPU state; a QEMU (TCG) stream is portable
        # between hosts, but our QEMU engine only knows how to restore the guest's arch.
        if engine == "krun" and (state.host_arch, state.host_os) != (facts.arch, facts.os):
            continue
        if engine == "qemu" and state.host_arch != manifest.guest_arch:
            continue
        return state
    return None


def _krun_plan(state: StateRef | None, why: str, cold: bool, flag: str) -> EnginePlan:
    return EnginePlan(
        engine="krun",
        accel=None,
        qemu=None,
        state=state,
        reason=_reason("krun", state, why, cold),
        flag=flag,
    )


def _qemu_plan(
    manifest: Manifest, facts: HostFacts, state: StateRef | None, why: str, cold: bool, flag: str
) -> EnginePlan:
    # States are saved under TCG, and a TCG migration stream must be loaded under TCG
    # (KVM would expose other CPUID bits than the saved vCPU had). Cold boots may use KVM.
    hv_accel = "hvf" if facts.os == "macos" else "kvm"
    same_arch = manifest.guest_arch == facts.arch
    accel = hv_accel if state is None and facts.hypervisor.usable and same_arch else "tcg"
    label = f"qemu ({accel})"
    return EnginePlan(
        engine="qemu",
        accel=accel,
        qemu=facts.qemu,
        state=state,
        reason=_reason(label, state, why, cold),
        flag=flag,
    )


def _reason(label: str, state: StateRef | None, why: str, cold: bool) -> str:
    if state is not None:
        how = f"restoring {state.name}"
    elif cold:
        how = "cold boot (requested)"
    else:
        how = "cold boot (no saved state for this engine and host)"
    return f"{label}, {how}: {why}"
