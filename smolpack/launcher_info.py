"""`./tool --smol-info`: what the pack holds, which engine would run it here, and why.

Run stage, read-only: opens the payload (header + index only), describes the machine and
asks `engine.select.plan_run` the same question a real run asks, without starting anything.
Like a run, it then asks the engine whether the planned state can restore on this host: a
state saved on another CPU, or by another QEMU, boots cold, and the engine line says why.
Not known here: a state whose sections fail verification (a run hashes them first) or that
fails to load (a run then boots cold too).
"""

from __future__ import annotations

import shlex

from smolpack.engine.select import plan_run, settle_plan
from smolpack.errors import HostError
from smolpack.machine import MachineConfig
from smolpack.payload import open_payload
from smolpack.payload.describe import describe, render_text


def info_text(path: str, engine: str, cold: bool) -> str:
    from smolpack.runner import host_facts

    with open_payload(path) as payload:
        info = describe(payload)
        manifest = payload.manifest()
        facts = host_facts(payload)
        try:
            plan = plan_run(manifest, facts, requested=engine, cold=cold)
            how = settle_plan(plan, manifest, facts, payload)[0].reason  # as a run does
        except HostError as err:
            how = f"none: {err.message}"
    machine = MachineConfig.from_dict(manifest.machine, label=path)
    default_run = shlex.join(machine.argv([])) or "(nothing: give a command)"
    lines = [
        render_text(info),
        "",
        f"machine   {machine.cpus} vCPU, {machine.memory_mib} MiB RAM,"
        f" network {'on' if machine.net else 'off'}",
        *_egress_lines(machine),
        *_host_lines(machine),
        f"runs      {default_run}",
        f"          with your arguments: {shlex.join(machine.entrypoint) or '(the arguments)'}"
        + (" ARGS..." if machine.entrypoint else ""),
        f"workdir   {machine.workdir or '/'}",
        f"engine    {how}",
    ]
    return "\n".join(lines)


def _egress_lines(machine: MachineConfig) -> list[str]:
    allowed = [*machine.allow_hosts, *machine.allow_cidrs]
    if not allowed:
        return []
    return [
        f"egress    only to {', '.join(allowed)} (enforced by krun; QEMU cannot filter and runs"
        " it only with --smol-allow-unfiltered-egress)"
    ]


def _host_lines(machine: MachineConfig) -> list[str]:
    """What each run attaches from this host (formats/smolfile.md)."""
    lines = [f"port      127.0.0.1:{h} -> guest port {g}" for h, g in machine.ports]
    if machine.ssh_agent:
        lines.append("ssh-agent yours, through SSH_AUTH_SOCK in the guest")
    if machine.host_cwd != "off":
        lines.append(
            f"cwd       yours, shared at the same path ({machine.host_cwd}; --smol-cwd=off)"
        )
    lines += [
        f"secret    {name} from {'$' + source if kind == 'env' else source}"
        for name, kind, source in machine.secrets
    ]
    return lines


def print_info(path: str, engine: str, cold: bool) -> None:
    print(info_text(path, engine, cold))
