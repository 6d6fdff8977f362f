"""Stage: create, Smolfile. The validated configuration objects (formats/smolfile.md).

Everything here is already checked: `load_smolfile` is the only producer, and
later stages (image, build VM, payload manifest) only read these objects.
`SmolConfig.to_dict()` is the JSON form printed by `smolfile check --json` and
stored in the payload manifest; `SmolConfig.packed()` applies `[artifact]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolpack.errors import SmolfileError

DEFAULT_CPUS = 1
DEFAULT_MEMORY_MIB = 512

# Values of `ImageRef.kind`.
KIND_ROOTFS_DIR = "rootfs-dir"  # a directory holding a root filesystem tree
KIND_OCI_LAYOUT = "oci-layout"  # a directory with an `oci-layout` file
KIND_ARCHIVE = "archive"  # a file: rootfs tarball or docker-archive (the image stage tells)
KIND_REGISTRY = "registry"  # a reference like `python:3.12-alpine`, not pulled yet


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """The Smolfile's `image`, classified (formats/smolfile.md, "image")."""

    raw: str  # the value exactly as written in the Smolfile
    kind: str  # one of the KIND_* constants above
    path: Path | None  # absolute local path; None for a registry reference
    line: int | None  # line of the `image` key, for later error messages

    @property
    def is_registry_ref(self) -> bool:
        return self.kind == KIND_REGISTRY

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.raw,
            "kind": self.kind,
            "is_registry_ref": self.is_registry_ref,
            "path": str(self.path) if self.path is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """One `volumes` entry, `host:guest[:ro|:rw]` (smolvm syntax)."""

    host_path: Path  # absolute host directory (relative entries resolve against the Smolfile)
    guest_path: str  # absolute path inside the guest
    read_only: bool  # True for `:ro`; smolvm's default (no suffix) is writable

    def to_dict(self) -> dict[str, Any]:
        return {"host": str(self.host_path), "guest": self.guest_path, "read_only": self.read_only}


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapping:
    """One concrete TCP forward; ranges in the Smolfile are expanded to these."""

    host_port: int  # 1..65535, unique within a Smolfile
    guest_port: int  # 1..65535

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host_port, "guest": self.guest_port}


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    """One `[secrets]` entry: where the host finds the value at each run (never the value)."""

    name: str  # the environment variable the program gets
    from_env: str | None = None  # read from this host environment variable, or
    from_file: str | None = None  # from this host file (absolute, or `~/...`: the runner's home)

    def to_dict(self) -> dict[str, Any]:
        source = {"from_env": self.from_env} if self.from_env else {"from_file": self.from_file}
        return {"name": self.name, **source}


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkPolicy:
    """The `[network]` egress allow lists; either one non-empty implies `net`."""

    allow_hosts: tuple[str, ...] = ()  # host names (or bare IPs), resolved at run time
    allow_cidrs: tuple[str, ...] = ()  # normalized networks, e.g. "10.0.0.0/8", "1.1.1.1/32"

    def to_dict(self) -> dict[str, Any]:
        return {"allow_hosts": list(self.allow_hosts), "allow_cidrs": list(self.allow_cidrs)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactOverrides:
    """The `[artifact]` (alias `[pack]`) section: values used only for the packed result."""

    cpus: int | None = None  # replaces `cpus` when set
    memory_mib: int | None = None  # replaces `memory` when set
    entrypoint: tuple[str, ...] = ()  # replaces `entrypoint` when non-empty (smolvm rule)
    cmd: tuple[str, ...] = ()  # replaces `cmd` when non-empty (smolvm rule)
    oci_platform: str | None = None  # "linux/<arch>[/<variant>]" to pull; None = the guest's

    @property
    def is_empty(self) -> bool:
        return self == ArtifactOverrides()

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            # only when set, so configs without it describe (and digest) as before
            **({"oci_platform": self.oci_platform} if self.oci_platform else {}),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SmolConfig:
    """A validated Smolfile with `[dev]` already merged (formats/smolfile.md)."""

    source_path: Path  # absolute path of the Smolfile
    source_name: str  # the path as the user gave it; prefixes every message
    image: ImageRef | None  # None when the Smolfile has no `image` (smolvm: bare VM)
    entrypoint: tuple[str, ...] = ()  # executable + fixed args; empty = the image's own
    cmd: tuple[str, ...] = ()  # default args after entrypoint; empty = the image's own
    env: tuple[tuple[str, str], ...] = ()  # (name, value), last definition wins, first order
    workdir: str | None = None  # absolute guest directory; None = the image's own
    cpus: int = DEFAULT_CPUS  # vCPUs, 1..64
    memory_mib: int = DEFAULT_MEMORY_MIB  # guest RAM in MiB, 64..131072
    net: bool = False  # outbound network; forced on by a non-empty [network] list
    init: tuple[str, ...] = ()  # shell steps run at build time, before the state is saved
    volumes: tuple[Volume, ...] = ()  # host directories shared into the guest
    ports: tuple[PortMapping, ...] = ()  # host -> guest TCP forwards, at most 64
    network: NetworkPolicy = NetworkPolicy()  # egress allow lists
    secrets: tuple[Secret, ...] = ()  # resolved on the host at each run, never at build time
    ssh_agent: bool = False  # [auth] ssh_agent: the program reaches the host's ssh-agent
    host_cwd: str = "off"  # "off" | "ro" | "rw": the user's current directory in the guest
    artifact: ArtifactOverrides = ArtifactOverrides()  # overrides for the packed result
    oci_platform: str | None = None  # platform to pull a registry image for (from [artifact])
    warnings: tuple[str, ...] = ()  # full warning lines, for the CLI to print

    def packed(self) -> SmolConfig:
        """The effective configuration of the packed result: `[artifact]` applied.

        The returned config has an empty `artifact`, so `packed()` is idempotent.
        """
        art = self.artifact
        return dataclasses.replace(
            self,
            cpus=art.cpus if art.cpus is not None else self.cpus,
            memory_mib=art.memory_mib if art.memory_mib is not None else self.memory_mib,
            entrypoint=art.entrypoint or self.entrypoint,
            cmd=art.cmd or self.cmd,
            oci_platform=art.oci_platform or self.oci_platform,
            artifact=ArtifactOverrides(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (`smolfile check --json`, payload manifest)."""
        return {
            "source": str(self.source_path),
            "image": self.image.to_dict() if self.image is not None else None,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": {name: value for name, value in self.env},
            "workdir": self.workdir,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "net": self.net,
            "init": list(self.init),
            "volumes": [v.to_dict() for v in self.volumes],
            "ports": [p.to_dict() for p in self.ports],
            "network": self.network.to_dict(),
            "secrets": [s.to_dict() for s in self.secrets],
            "ssh_agent": self.ssh_agent,
            "host_cwd": self.host_cwd,
            "artifact": self.artifact.to_dict(),
            **({"oci_platform": self.oci_platform} if self.oci_platform else {}),
            "warnings": list(self.warnings),
        }


def one_line(text: str) -> str:
    """Escape control characters so a message quoting user input stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def require_image(config: SmolConfig) -> ImageRef:
    """The config's image, local or a registry reference; refuse a Smolfile without one."""
    if config.image is None:
        raise SmolfileError(
            config.source_name,
            "no 'image' set; smolpack needs an image (a registry reference like alpine:3.20,"
            " a rootfs directory, tarball, OCI layout or docker archive)",
        )
    return config.image
