"""Engine and state selection (smolpack/engine/select.py) on pinned host facts."""

from __future__ import annotations

import pytest

from smolpack.engine.select import HostFacts, cold_instead, plan_run
from smolpack.errors import HostError, UsageError
from smolpack.host import KvmStatus
from smolpack.payload import Manifest, StateRef

PVM = KvmStatus(False, "/dev/kvm is provided by kvm_pvm, which cannot run a normal guest kernel")
KVM = KvmStatus(True, "/dev/kvm is usable (kvm_intel)")
QEMU_STATE = StateRef(
    name="qemu-x86_64",
    engine="qemu",
    host_arch="x86_64",
    host_os="linux",
    sections=("qemu-x86_64/migration",),
)
KRUN_STATE = StateRef(
    name="krun-x86_64",
    engine="krun",
    host_arch="x86_64",
    host_os="linux",
    sections=("krun-x86_64/memory", "krun-x86_64/checkpoint", "krun-x86_64/manifest"),
)


def manifest(*states: StateRef, guest_arch: str = "x86_64") -> Manifest:
    return Manifest(
        smolpack_version="0.1.0", created="2026-11-23T00:00:00Z", guest_arch=guest_arch,
        states=states,
    )  # fmt: skip


def facts(hv: KvmStatus = PVM, *, libkrun: str | None = "smolmachines", qemu: bool = True,
          arch: str = "x86_64", os: str = "linux") -> HostFacts:  # fmt: skip
    return HostFacts(
        arch=arch, os=os, hypervisor=hv, libkrun=libkrun,
        qemu="/usr/bin/qemu-system-x86_64" if qemu else None,
    )  # fmt: skip


def test_our_machines_restore_the_qemu_state_under_tcg_and_say_why() -> None:
    plan = plan_run(manifest(KRUN_STATE, QEMU_STATE), facts(), requested="auto", cold=False)
    assert (plan.engine, plan.accel, plan.state) == ("qemu", "tcg", QEMU_STATE)
    assert plan.qemu == "/usr/bin/qemu-system-x86_64"
    assert plan.reason == (
        "qemu (tcg), restoring qemu-x86_64: hardware virtualization unavailable: " + PVM.reason
    )


def test_kvm_host_restores_the_krun_state() -> None:
    plan = plan_run(manifest(KRUN_STATE, QEMU_STATE), facts(KVM), requested="auto", cold=False)
    assert (plan.engine, plan.accel, plan.qemu, plan.state) == ("krun", None, None, KRUN_STATE)
    assert plan.reason == "krun, restoring krun-x86_64: /dev/kvm is usable (kvm_intel)"


def test_kvm_host_without_krun_state_boots_krun_cold_rather_than_emulate() -> None:
    plan = plan_run(manifest(QEMU_STATE), facts(KVM), requested="auto", cold=False)
    assert (plan.engine, plan.state) == ("krun", None)
    assert plan.reason.startswith("krun, cold boot (no saved state for this engine and host)")


def test_krun_state_of_another_host_is_not_restored() -> None:
    mac = facts(KvmStatus(True, "Hypervisor.framework is available"), arch="x86_64", os="macos")
    plan = plan_run(manifest(KRUN_STATE), mac, requested="auto", cold=False)
    assert (plan.engine, plan.state) == ("krun", None)


def test_without_libkrun_a_kvm_host_uses_qemu_cold_with_kvm_accel() -> None:
    plan = plan_run(manifest(KRUN_STATE), facts(KVM, libkrun=None), requested="auto", cold=False)
    assert (plan.engine, plan.accel, plan.state) == ("qemu", "kvm", None)
    assert plan.reason == (
        "qemu (kvm), cold boot (no saved state for this engine and host): libkrun not found"
    )


def test_qemu_restore_stays_on_tcg_even_with_kvm() -> None:
    plan = plan_run(manifest(QEMU_STATE), facts(KVM), requested="qemu", cold=False)
    assert (plan.engine, plan.accel, plan.state) == ("qemu", "tcg", QEMU_STATE)
    assert plan.reason == "qemu (tcg), restoring qemu-x86_64: requested"


def test_a_state_that_cannot_restore_here_boots_cold_on_the_same_engine() -> None:
    plan = plan_run(manifest(QEMU_STATE), facts(KVM), requested="qemu", cold=False)
    cold = cold_instead(plan, manifest(QEMU_STATE), facts(KVM), "it was saved by QEMU 8.2.2")
    # Booting, QEMU may use KVM (a restore stays on TCG); the why and the flag stay the plan's.
    assert (cold.engine, cold.accel, cold.state, cold.flag) == ("qemu", "kvm", None, plan.flag)
    assert cold.reason == (
        "qemu (kvm), cold boot (not restoring qemu-x86_64: it was saved by QEMU 8.2.2): requested"
    )


def test_cold_never_restores() -> None:
    plan = plan_run(manifest(QEMU_STATE), facts(), requested="auto", cold=True)
    assert (plan.engine, plan.state) == ("qemu", None)
    assert plan.reason.startswith("qemu (tcg), cold boot (requested): hardware virtualization")


def test_forcing_krun_here_is_one_clear_line() -> None:
    with pytest.raises(HostError) as err:
        plan_run(manifest(KRUN_STATE), facts(), requested="krun", cold=False)
    assert str(err.value) == (
        f"hardware virtualization unavailable: {PVM.reason}; use --smol-engine=qemu"
    )


def test_forcing_krun_for_a_foreign_guest() -> None:
    with pytest.raises(HostError, match="^the guest is aarch64 but this host is x86_64;"):
        plan_run(manifest(guest_arch="aarch64"), facts(KVM), requested="krun", cold=False)


def test_forcing_qemu_without_qemu() -> None:
    with pytest.raises(HostError) as err:
        plan_run(manifest(QEMU_STATE), facts(KVM, qemu=False), requested="qemu", cold=False)
    assert str(err.value) == (
        "qemu-system-x86_64 not found on PATH; install QEMU or use --smol-engine=krun"
    )


def test_no_engine_at_all() -> None:
    with pytest.raises(HostError) as err:
        plan_run(manifest(QEMU_STATE), facts(qemu=False), requested="auto", cold=False)
    assert str(err.value).startswith(
        "no engine can run this pack: hardware virtualization unavailable: "
    )


def test_unknown_engine_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown engine 'kvm'"):
        plan_run(manifest(), facts(), requested="kvm", cold=False)
