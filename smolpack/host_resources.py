"""What a run attaches from the host (run stage): secrets, forwarded ports, the ssh-agent.

Everything here happens on the machine that runs the tool, at each run, before the VM
starts, so a problem is one line and no VM was started for nothing:

- secrets (formats/smolfile.md, `[secrets]`): read from the runner's environment or files
  and put into the program's environment only. The pack holds the references, never a value,
  and build steps never see them (so no value can be in the saved RAM or disk);
- forwarded ports (`ports`, `--smol-port`): 127.0.0.1 listeners bound here, carried into
  the guest on agent channels (formats/agent-protocol.md 5.7), so they work with `net = false`;
- the ssh-agent (`[auth] ssh_agent`, `--smol-ssh-agent`): the host's `SSH_AUTH_SOCK`,
  reached from the guest's `/run/smolpack/ssh-agent.sock` on the same channels;
- host directories (`--smol-volume`, `host_cwd`/`--smol-cwd`): served by `hostdir.server.HostDir`
  as FUSE on a channel (formats/agent-protocol.md 5.8), mounted for this run only.

(Egress allow lists are the engine's business: `runner._check_egress`.)
Stdlib only: the launcher imports it, for a run that has any of these.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from types import TracebackType

from smolpack.agent import protocol as p
from smolpack.agent.channels import (
    ChannelHub,
    PortForward,
    host_ssh_auth_sock,
    listen_forwards,
)
from smolpack.errors import HostError, UsageError
from smolpack.hostdir.server import HostDir
from smolpack.machine import MachineConfig

MAX_SECRET_FILE = 256 * 1024  # a secret file bigger than this is a wrong path


def resolve_secrets(
    machine: MachineConfig, environ: dict[str, str] | os._Environ[str]
) -> list[str]:
    """`NAME=value` for each secret, read now; HostError naming the secret otherwise."""
    entries = []
    for name, kind, source in machine.secrets:
        if kind == "env":
            value = environ.get(source)
            if value is None:
                raise HostError(f"secret {name}: environment variable {source} is not set")
        else:
            path = os.path.expanduser(source)
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_SECRET_FILE + 1)
            except OSError as err:
                raise HostError(f"secret {name}: cannot read {path}: {err.strerror}") from None
            if len(data) > MAX_SECRET_FILE:
                raise HostError(f"secret {name}: {path} is larger than {MAX_SECRET_FILE} bytes")
            # Like $(cat file): the trailing newline editors add is not part of the value.
            value = data.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        if "\0" in value:
            raise HostError(f"secret {name}: the value contains a NUL byte")
        entries.append(f"{name}={value}")
    return entries


def merge_env(base: tuple[str, ...], extra: list[str]) -> tuple[str, ...]:
    """`base` with `extra` entries added; an extra KEY replaces base's KEY in place."""
    merged = {e.partition("=")[0]: e for e in base}
    merged.update({e.partition("=")[0]: e for e in extra})
    return tuple(merged.values())


@dataclass(frozen=True, slots=True)
class HostVolume:
    """A host directory mounted into the guest for one run."""

    host: str  # absolute host directory
    guest: str  # absolute guest path
    read_only: bool


def parse_volume(spec: str, flag: str) -> HostVolume:
    """`HOST:GUEST[:ro|:rw]` (HOST relative to the current directory); UsageError otherwise."""
    parts = spec.split(":")
    mode = parts.pop() if len(parts) == 3 and parts[2] in ("ro", "rw") else "rw"
    if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
        raise UsageError(f"{flag} {spec!r}: expected HOST:GUEST[:ro] with an absolute GUEST")
    host = os.path.abspath(os.path.expanduser(parts[0]))
    if not os.path.isdir(host):
        raise UsageError(f"{flag} {spec!r}: {host} is not a directory")
    return HostVolume(host, os.path.normpath(parts[1]), mode == "ro")


def cwd_volume(mode: str, flag: str) -> HostVolume | None:
    """The current directory at the same path (`host_cwd`), or None for "off"."""
    if mode == "off":
        return None
    if mode not in ("ro", "rw"):
        raise UsageError(f"{flag} must be off, ro or rw (got {mode!r})")
    cwd = os.getcwd()
    if cwd == "/":
        raise UsageError(f"{flag}: the current directory is /, which cannot be shared")
    return HostVolume(cwd, cwd, mode == "ro")


@dataclass(slots=True, kw_only=True)
class Attachments:
    """The bound listeners and the ssh-agent socket of one run; close() releases them."""

    listeners: list[tuple[socket.socket, int]] = field(default_factory=list)
    ssh_auth_sock: str | None = None  # the host agent's socket when forwarded
    mounts: list[tuple[HostDir, str]] = field(default_factory=list)  # (served dir, guest path)
    cwd: str | None = None  # the program's working directory when the host's cwd is shared

    @property
    def wanted(self) -> bool:
        return bool(self.listeners or self.mounts) or self.ssh_auth_sock is not None

    def hub(self, protocol_version: int) -> ChannelHub | None:
        """The run's channel hub (it then owns the listeners), or None if none is needed."""
        if not self.wanted:
            return None
        if protocol_version < 2:
            raise HostError(
                "this pack's guest agent predates forwarded ports, ssh-agent forwarding and host"
                " directories (agent protocol 1); rebuild it with this smolpack"
            )
        listeners, self.listeners = self.listeners, []
        mounts, self.mounts = self.mounts, []
        return ChannelHub(listeners, self.ssh_auth_sock, mounts)

    def env(self) -> list[str]:
        return [f"SSH_AUTH_SOCK={p.GUEST_SSH_AUTH_SOCK}"] if self.ssh_auth_sock else []

    def close(self) -> None:
        for sock, _guest in self.listeners:
            sock.close()
        self.listeners = []
        for hostdir, _path in self.mounts:
            hostdir.close()
        self.mounts = []

    def __enter__(self) -> Attachments:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def attach(
    machine: MachineConfig,
    ports: tuple[PortForward, ...],
    ssh_agent: bool,
    flag_prefix: str,
    volumes: tuple[HostVolume, ...] = (),
    cwd_mode: str | None = None,
) -> Attachments:
    """Bind the run's forwards (the pack's, then the user's, which win per host port), find
    the host's ssh-agent when the pack or the user asks for it, and open the shared
    directories (the user's volumes, the current directory per `cwd_mode` or the pack's
    `host_cwd`)."""
    by_host = {h: PortForward(h, g) for h, g in machine.ports}
    by_host.update({f.host_port: f for f in ports})
    sock = None
    if ssh_agent or machine.ssh_agent:
        flag = f"{flag_prefix}ssh-agent" if ssh_agent else "[auth] ssh_agent"
        sock = host_ssh_auth_sock(flag)
    here = cwd_volume(cwd_mode or machine.host_cwd, f"{flag_prefix}cwd")
    shared = sorted([*volumes, *([here] if here else [])], key=lambda v: v.guest)
    att = Attachments(ssh_auth_sock=sock, cwd=here.guest if here else None)
    try:
        for vol in shared:
            try:
                att.mounts.append((HostDir(vol.host, read_only=vol.read_only), vol.guest))
            except OSError as err:
                raise HostError(f"cannot share {vol.host}: {err.strerror}") from None
        att.listeners = listen_forwards(list(by_host.values()))
    except BaseException:
        att.close()
        raise
    return att
