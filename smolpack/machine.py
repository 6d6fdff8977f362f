"""The machine a pack describes: what the manifest's `machine` object holds.

Stage: create writes it (from the Smolfile's packed configuration merged over
the image's defaults), run reads it back. It is everything the launcher needs
to boot or restore the VM and to build the RUN request; the Smolfile itself is
not shipped. JSON shape: formats/smolmachine.md, "The manifest".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smolpack.errors import BadLayout

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    cpus: int  # vCPUs; the saved state only restores with the same count
    memory_mib: int  # guest RAM; likewise fixed by the saved state
    net: bool  # attach a network device
    entrypoint: tuple[str, ...]  # argv prefix of every run
    cmd: tuple[str, ...]  # default arguments, replaced by the user's arguments
    env: tuple[str, ...]  # "KEY=VALUE" entries for every run (PATH included)
    workdir: str  # working directory of every run; "" means "/"
    kernel_cmdline: str  # the guest kernel command line (equal at save and restore)
    allow_hosts: tuple[str, ...] = ()  # egress allow list (krun: TSI egress policy), host names
    allow_cidrs: tuple[str, ...] = ()  # egress allow list, networks like "10.0.0.0/8"
    # locales the image provides, normalized ("en_US.utf8"); ("*",) for musl: which of the
    # user's LANG/LC_* a terminal run may pass on (`terminal_env`)
    locales: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()  # (host, guest) TCP forwards of every run
    ssh_agent: bool = False  # every run reaches the host's ssh-agent ([auth] ssh_agent)
    # [secrets] references (name, "env" | "file", variable or path); values are read on the
    # host at each run and never stored anywhere in the pack.
    secrets: tuple[tuple[str, str, str], ...] = ()
    host_cwd: str = "off"  # "off" | "ro" | "rw": the user's current directory in the guest

    def argv(self, args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """What a run executes: the entrypoint, then the user's args or else `cmd`."""
        return self.entrypoint + (tuple(args) if args else self.cmd)

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "cpus": self.cpus,
                "memory_mib": self.memory_mib,
                "net": self.net,
                "entrypoint": list(self.entrypoint),
                "cmd": list(self.cmd),
                "env": list(self.env),
                "workdir": self.workdir,
                "kernel_cmdline": self.kernel_cmdline,
            }
            | (  # only when set: packs without a [network] list keep their exact bytes
                {"allow_hosts": list(self.allow_hosts), "allow_cidrs": list(self.allow_cidrs)}
                if self.allow_hosts or self.allow_cidrs
                else {}
            )
            | ({"locales": list(self.locales)} if self.locales else {})
            | ({"ports": [list(p) for p in self.ports]} if self.ports else {})
            | ({"ssh_agent": True} if self.ssh_agent else {})
            | ({"secrets": [list(s) for s in self.secrets]} if self.secrets else {})
            | ({"host_cwd": self.host_cwd} if self.host_cwd != "off" else {})
        )

    @classmethod
    def from_dict(cls, obj: dict[str, Any], *, label: str = "manifest") -> MachineConfig:
        """Parse the manifest's `machine`; a bad field is payload damage, named."""

        def field(key: str, kind: type) -> Any:
            value = obj.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise BadLayout(f"{label}: field 'machine.{key}' is missing or not {kind.__name__}")
            return value

        def strings(key: str, default: list[str] | None = None) -> tuple[str, ...]:
            value = field(key, list) if default is None or key in obj else default
            if not all(isinstance(v, str) for v in value):
                raise BadLayout(f"{label}: field 'machine.{key}' must be a list of strings")
            return tuple(value)

        env = strings("env")
        for i, entry in enumerate(env):
            # Checked here, where it is the pack's fault (exit 115), not later at RUN encoding
            # (a usage error, 123, as if the user had typed it).
            if "=" not in entry[1:] or "\0" in entry:
                raise BadLayout(f"{label}: field 'machine.env[{i}]' is not KEY=VALUE")

        def table(key: str, width: int, kinds: tuple[type, ...]) -> tuple[Any, ...]:
            rows = obj.get(key, [])
            if not isinstance(rows, list) or not all(
                isinstance(r, list)
                and len(r) == width
                and all(
                    isinstance(v, k) and not isinstance(v, bool)
                    for v, k in zip(r, kinds, strict=True)
                )
                for r in rows
            ):
                raise BadLayout(f"{label}: field 'machine.{key}' is malformed")
            return tuple(tuple(r) for r in rows)

        cpus, memory = field("cpus", int), field("memory_mib", int)
        if not 1 <= cpus <= 64 or not 64 <= memory <= 131072:
            raise BadLayout(f"{label}: field 'machine' has cpus={cpus} memory_mib={memory}")
        return cls(
            cpus=cpus,
            memory_mib=memory,
            net=field("net", bool),
            entrypoint=strings("entrypoint"),
            cmd=strings("cmd"),
            env=env,
            workdir=field("workdir", str),
            kernel_cmdline=field("kernel_cmdline", str),
            allow_hosts=strings("allow_hosts", []),
            allow_cidrs=strings("allow_cidrs", []),
            locales=strings("locales", []),
            ports=table("ports", 2, (int, int)),
            ssh_agent=obj.get("ssh_agent") is True,
            secrets=table("secrets", 3, (str, str, str)),
            host_cwd=str(obj.get("host_cwd")) if obj.get("host_cwd") in ("ro", "rw") else "off",
        )


def merge_env(*layers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Later layers override earlier ones by key (image, then Smolfile); PATH always set."""
    merged: dict[str, str] = {"PATH": DEFAULT_PATH}
    for layer in layers:
        merged.update(layer)
    return tuple(f"{k}={v}" for k, v in merged.items())


# What a terminal session passes from the user's environment (issue: vi, less and top need
# TERM). LANG and LC_* only when the image has that locale: a missing one makes programs
# warn on every start (bash, perl) or fall back to ASCII anyway.
TERMINAL_VARS = ("TERM", "LANG", "LC_ALL")
_ALWAYS_LOCALES = ("C", "POSIX")


def terminal_env(
    env: tuple[str, ...], host: Mapping[str, str], locales: tuple[str, ...]
) -> tuple[str, ...]:
    """`env` plus the host's TERM, LANG, LC_ALL and LC_* for a run at a terminal.

    The pack's own entries (image, then Smolfile) win: a name it sets is never replaced.
    """
    have = {entry.split("=", 1)[0] for entry in env}
    names = [*TERMINAL_VARS, *sorted(k for k in host if k.startswith("LC_") and k != "LC_ALL")]
    extra = []
    for name in names:
        value = host.get(name, "")
        if name in have or not value or "\0" in value:
            continue
        if name != "TERM" and value not in _ALWAYS_LOCALES and not locale_known(value, locales):
            continue
        extra.append(f"{name}={value}")
    return env + tuple(extra)


def normalize_locale(name: str) -> str:
    """glibc's _nl_normalize_codeset on the codeset part: `en_US.UTF-8` -> `en_US.utf8`."""
    base, dot, rest = name.partition(".")
    if not dot:
        return name
    codeset, at, modifier = rest.partition("@")
    codeset = "".join(c.lower() for c in codeset if c.isalnum())
    return f"{base}.{codeset}{at}{modifier}"


def locale_known(value: str, locales: tuple[str, ...]) -> bool:
    return "*" in locales or normalize_locale(value) in locales
