"""`smolpack doctor`: what this host can run, and why (host facts, see smolpack/host.py).

Collects every fact even when some are missing, prints them, and only then fails (exit 4,
HostError) if no engine could run a guest here. Which engine would, and why, is the run's own
planner (`engine.select.plan_run`) asked about a guest of this host's architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from smolpack import host
from smolpack.engine import registry
from smolpack.engine.select import BareGuest, HostFacts, NoEngine, plan_run
from smolpack.errors import HostError
from smolpack.kernel import extract_kernel
from smolpack.runtime_libs import find_runtime_libs
from smolpack.tools import ToolStatus, probe_all


@dataclass(frozen=True, slots=True, kw_only=True)
class DoctorReport:
    """Everything `doctor` prints; `as_dict` is the --json schema (keys are stable)."""

    # host architecture (x86_64 / aarch64) and OS (linux / macos)
    arch: str
    os: str
    # hardware virtualization usable, and the reason either way
    hypervisor_usable: bool
    hypervisor_reason: str
    # qemu-system-<arch> path and version, or the error text when missing
    qemu_path: str | None
    qemu_version: str | None
    qemu_error: str | None
    # where libkrun/libkrunfw came from ("env" / "smolmachines" / "system"), paths, or error
    libs_source: str | None
    libkrun_path: str | None
    libkrunfw_path: str | None
    libs_error: str | None
    # kernel inside libkrunfw: Linux release and firmware ABI version
    kernel_version: str | None
    krunfw_abi: int | None
    # engine that would run ("krun" / "qemu" / None), its QEMU accel, and why
    engine: str | None
    accel: str | None
    engine_reason: str
    # every engine of the registry, "usable: why" or "unusable: why"
    engines: dict[str, str] = field(default_factory=dict)
    # every external program smolpack runs: path and version, or None when missing
    tools: tuple[ToolStatus, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["tools"] = [t.as_dict() for t in self.tools]
        return out


def collect_report() -> DoctorReport:
    """Probe the host; never raises for a missing component (it is reported instead)."""
    arch = host.host_arch()
    hv = host.hypervisor_status()
    qemu_path = qemu_ver = qemu_err = None
    try:
        qemu = host.find_qemu(arch)
        qemu_path = str(qemu)
        qemu_ver = host.qemu_version(qemu)
    except HostError as err:
        qemu_err = err.message
    libs_source = krun_path = fw_path = libs_err = kernel_ver = None
    abi = None
    try:
        libs = find_runtime_libs()
        libs_source, krun_path, fw_path = (
            libs.source,
            str(libs.libkrun_path),
            str(libs.libkrunfw_path),
        )
        blob = extract_kernel(libs)
        kernel_ver, abi = blob.version, blob.abi_version
    except HostError as err:
        libs_err = err.message
    facts = HostFacts(
        arch=arch,
        os=host.host_os(),
        hypervisor=hv,
        libkrun=libs_source if krun_path is not None else None,
        qemu=qemu_path if qemu_ver is not None else None,
    )
    engine, accel, reason = _choose(arch, facts)
    return DoctorReport(
        arch=arch,
        os=host.host_os(),
        hypervisor_usable=hv.usable,
        hypervisor_reason=hv.reason,
        qemu_path=qemu_path,
        qemu_version=qemu_ver,
        qemu_error=qemu_err,
        libs_source=libs_source,
        libkrun_path=krun_path,
        libkrunfw_path=fw_path,
        libs_error=libs_err,
        kernel_version=kernel_ver,
        krunfw_abi=abi,
        engine=engine,
        accel=accel,
        engine_reason=reason,
        engines=_engines(arch, facts),
        tools=tuple(probe_all(arch)),
    )


def _choose(arch: str, facts: HostFacts) -> tuple[str | None, str | None, str]:
    """(engine, accel, one line why) that would run a guest here: a run's planner."""
    try:
        plan = plan_run(BareGuest(arch), facts, requested="auto", cold=True)
    except NoEngine as err:
        return None, None, f"no engine: {'; '.join(err.whys)}"
    return plan.engine, plan.accel, f"{plan.label}: {plan.why}"


def _engines(arch: str, facts: HostFacts) -> dict[str, str]:
    """Every engine of the registry: "usable: why" or "unusable: why"."""
    out = {}
    for name in registry.names():
        ok, why = registry.load(name).usable(arch, facts)
        out[name] = f"{'usable' if ok else 'unusable'}: {why}"
    return out


def format_report(r: DoctorReport) -> str:
    hv = ("usable: " if r.hypervisor_usable else "unusable: ") + r.hypervisor_reason
    qemu = f"{r.qemu_path} ({r.qemu_version})" if r.qemu_version else f"missing: {r.qemu_error}"
    if r.libs_source is not None:
        krun = f"{r.libkrun_path} (from {r.libs_source})"
        if r.kernel_version is not None:
            fw = f"{r.libkrunfw_path} (ABI {r.krunfw_abi}, Linux {r.kernel_version})"
        else:
            fw = f"{r.libkrunfw_path} (unusable: {r.libs_error})"
    else:
        krun = fw = f"missing: {r.libs_error}"
    rows = [
        ("host", f"{r.os} {r.arch}"),
        ("hypervisor", hv),
        ("qemu", qemu),
        ("libkrun", krun),
        ("libkrunfw", fw),
        ("engine", r.engine_reason),
        ("tools", "the programs smolpack runs, and for what"),
    ]
    lines = [f"{k + ':':<12}{v}" for k, v in rows]
    # Engines beyond the two described above (their facts are their own to probe).
    lines[6:6] = [f"{'  ' + n:<12}{v}" for n, v in r.engines.items() if n not in ("krun", "qemu")]
    for t in r.tools:
        found = f"{t.path} ({t.version})" if t.path else f"missing (package {t.tool.package})"
        lines.append(f"  {t.tool.name:<20}{found} [{t.tool.used_by}]")
    return "\n".join(lines)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def doctor(as_json: bool) -> None:
    """Show what this host can run: hypervisor, QEMU, libkrun, guest kernel, engine.

    Exits 4 if no engine can run a guest here.
    """
    report = collect_report()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(format_report(report))
    if report.engine is None:
        raise HostError(report.engine_reason)


COMMANDS: list[click.Command] = [doctor]
