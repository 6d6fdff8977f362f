"""Stage: create, Smolfile. Parsers for string-encoded values (formats/smolfile.md).

Each parser takes one already type-checked value and returns the typed form
or raises `ValueProblem`; the loader turns that into a `SmolfileError` with
the file, the line of the offending item and the key. Syntax mirrors smolvm
where the two overlap: ports `HOST:GUEST` with equal-length ranges and a cap of
64 concrete mappings, volumes `host:guest[:ro|:rw]`, bare IPs as CIDRs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from smolpack.smolfile._model import (
    KIND_ARCHIVE,
    KIND_OCI_LAYOUT,
    KIND_REGISTRY,
    KIND_ROOTFS_DIR,
    ImageRef,
    PortMapping,
    Secret,
    Volume,
)

# smolvm's MAX_PORT_MAPPINGS: one listener per mapping, so it caps the expansion.
MAX_PORT_MAPPINGS = 64

# Names ending like this are archives: treated as local paths even without `./`,
# so a typo in `rootfs.tar` is "does not exist", not a bogus registry reference.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")

# Docker/OCI image reference grammar (distribution/reference), written out:
# [domain[:port]/]path-component(/path-component)*[:tag][@digest]
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
)


class ValueProblem(Exception):
    """A bad value; `needle` is text that locates the item on its line."""

    def __init__(self, problem: str, needle: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.needle = needle


def _looks_like_path(raw: str) -> bool:
    return (
        raw in (".", "..")
        or raw.startswith(("/", "./", "../", "~"))
        or raw.endswith(ARCHIVE_SUFFIXES)
    )


def _resolve(text: str, base_dir: Path, label: str, needle: str) -> tuple[Path, str | None]:
    """(absolute path, "dir" | "file" | "other" | None if missing) without raising OS errors.

    `Path.exists()` raises for a NUL byte or a too-long name (ENAMETOOLONG); both
    are user input here and must become one-line errors, not tracebacks.
    """
    try:
        path = (base_dir / os.path.expanduser(text)).resolve()
        if not path.exists():
            return path, None
        return path, "dir" if path.is_dir() else "file" if path.is_file() else "other"
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueProblem(f"{label} '{text}' cannot be used ({reason})", needle) from None


def parse_image(raw: str, base_dir: Path, line: int | None) -> ImageRef:
    """Classify `image` as a local path or a registry reference.

    Rules, in order: an empty or padded value is an error; a value that names
    an existing path (relative to the Smolfile's directory) is local; a value
    that looks like a path (`/`, `./`, `../`, `~`, or an archive suffix) but
    does not exist is an error naming the resolved path; anything else must be
    a valid registry reference.
    """
    if not raw or raw != raw.strip():
        raise ValueProblem("image must be a non-empty string without surrounding spaces")
    path, found = _resolve(raw, base_dir, "image path", raw)
    if found == "dir":
        kind = KIND_OCI_LAYOUT if (path / "oci-layout").is_file() else KIND_ROOTFS_DIR
        return ImageRef(raw=raw, kind=kind, path=path, line=line)
    if found == "file":
        return ImageRef(raw=raw, kind=KIND_ARCHIVE, path=path, line=line)
    if found == "other":
        raise ValueProblem(f"image path {path} is neither a directory nor a regular file")
    if _looks_like_path(raw):
        raise ValueProblem(f"image path {path} does not exist")
    if _REFERENCE.fullmatch(raw):
        return ImageRef(raw=raw, kind=KIND_REGISTRY, path=None, line=line)
    raise ValueProblem(
        f"image '{raw}' is neither an existing path ({path}) nor a valid registry reference"
    )


_OCI_ARCH = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}


def parse_oci_platform(text: str) -> str:
    """`[artifact] oci_platform`: `linux/amd64`, `linux/arm64[/v8]` (smolvm's pull platform)."""
    parts = text.split("/")
    if len(parts) in (2, 3) and parts[0] == "linux" and parts[1] in _OCI_ARCH:
        if len(parts) == 2 or re.fullmatch(r"v[0-9]+", parts[2]):
            return "/".join(["linux", _OCI_ARCH[parts[1]], *parts[2:]])
    raise ValueProblem(
        f"oci_platform '{text}' must be linux/amd64 or linux/arm64 (optionally /<variant>)"
    )


def parse_env(entry: str) -> tuple[str, str]:
    """`KEY=VALUE`; surrounding whitespace is trimmed as smolvm does."""
    text = entry.strip()
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueProblem(f"env entry '{entry}' must be KEY=VALUE", entry)
    if not _ENV_NAME.fullmatch(name):
        raise ValueProblem(f"env entry '{entry}' has an invalid name '{name}'", entry)
    return name, value


def _parse_port(text: str, label: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueProblem(f"ports entry '{spec}': invalid {label} '{text}' (1..65535)", spec)
    return int(text)


def _parse_range(text: str, label: str, spec: str) -> range:
    start_text, dash, end_text = text.partition("-")
    start = _parse_port(start_text, label, spec)
    end = _parse_port(end_text, label, spec) if dash else start
    if start > end:
        raise ValueProblem(f"ports entry '{spec}': {label} range {start}-{end} is reversed", spec)
    return range(start, end + 1)


def parse_port_spec(spec: str) -> list[PortMapping]:
    """`PORT`, `HOST:GUEST`, or equal-length ranges `A-B:C-D`."""
    host_text, colon, guest_text = spec.partition(":")
    host = _parse_range(host_text, "host port" if colon else "port", spec)
    guest = _parse_range(guest_text, "guest port", spec) if colon else host
    if len(host) != len(guest):
        raise ValueProblem(
            f"ports entry '{spec}': host and guest ranges differ in length"
            f" ({len(host)} vs {len(guest)})",
            spec,
        )
    return [PortMapping(host_port=h, guest_port=g) for h, g in zip(host, guest, strict=True)]


def parse_ports(specs: list[str]) -> tuple[PortMapping, ...]:
    mappings: list[PortMapping] = []
    seen: dict[int, str] = {}
    for spec in specs:
        for mapping in parse_port_spec(spec):
            if mapping.host_port in seen:
                raise ValueProblem(
                    f"ports entry '{spec}': host port {mapping.host_port} is already mapped"
                    f" by '{seen[mapping.host_port]}'",
                    spec,
                )
            seen[mapping.host_port] = spec
            mappings.append(mapping)
    if len(mappings) > MAX_PORT_MAPPINGS:
        raise ValueProblem(
            f"ports expand to {len(mappings)} mappings; at most {MAX_PORT_MAPPINGS} are allowed"
        )
    return tuple(mappings)


def parse_volume(spec: str, base_dir: Path, cwd: Path | None = None) -> tuple[Volume, str | None]:
    """`host:guest[:ro|:rw]`; the host side must be an existing directory.

    A relative host path is looked up in the Smolfile's directory first; smolvm resolves it
    against the current directory (its own examples are written that way), so when it is
    only found there (`cwd`), that one is used and the second value is a warning saying so.
    """
    parts = spec.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts[2] == "ro"
    elif len(parts) == 2:
        read_only = False
    else:
        raise ValueProblem(f"volumes entry '{spec}' must be host:guest[:ro|:rw]", spec)
    host_text, guest = parts[0], parts[1]
    if not host_text:
        raise ValueProblem(f"volumes entry '{spec}' has an empty host path", spec)
    if not guest.startswith("/"):
        raise ValueProblem(f"volumes entry '{spec}': guest path '{guest}' must be absolute", spec)
    label = f"volumes entry '{spec}': host path"
    host, found = _resolve(host_text, base_dir, label, spec)
    warning = None
    relative = not os.path.isabs(os.path.expanduser(host_text))
    if found is None and relative and cwd is not None and cwd.resolve() != base_dir.resolve():
        in_cwd, found_in_cwd = _resolve(host_text, cwd, label, spec)
        if found_in_cwd is not None:
            host, found = in_cwd, found_in_cwd
            warning = (
                f"volumes entry '{spec}': {host_text} is not in the Smolfile's directory;"
                f" using {host} from the current directory (smolvm's rule)"
            )
    if found is None:
        raise ValueProblem(f"volumes entry '{spec}': host path {host} does not exist", spec)
    if found != "dir":
        raise ValueProblem(f"volumes entry '{spec}': host path {host} is not a directory", spec)
    return Volume(host_path=host, guest_path=guest, read_only=read_only), warning


def parse_allow_host(host: str) -> str:
    if ":" in host and not _is_ip(host):
        raise ValueProblem(
            f"allow_hosts entry '{host}': port suffixes are not supported (give the host only)",
            host,
        )
    if not (_is_ip(host) or (_HOSTNAME.fullmatch(host) and len(host) <= 253)):
        raise ValueProblem(f"allow_hosts entry '{host}' is not a valid host name", host)
    return host


def parse_allow_cidr(text: str) -> str:
    """A network or a bare IP (smolvm: bare IPv4 -> /32, IPv6 -> /128)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueProblem(
            f"allow_cidrs entry '{text}' is not a CIDR like 10.0.0.0/8 or an IP like 1.1.1.1",
            text,
        ) from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_secret(name: str, value: object) -> Secret:
    """A `[secrets]` entry: `NAME = { from_env = "VAR" }` or `{ from_file = "/abs/path" }`."""
    if not _ENV_NAME.fullmatch(name):
        raise ValueProblem(f"secret name '{name}' must match [A-Za-z_][A-Za-z0-9_]*", name)
    if not isinstance(value, dict) or len(value) != 1 or not {"from_env", "from_file"} & set(value):
        raise ValueProblem(
            f'secret {name} must be {{ from_env = "VAR" }} or {{ from_file = "/path" }}', name
        )
    ((key, source),) = value.items()
    if not isinstance(source, str) or not source:
        raise ValueProblem(f"secrets.{name}.{key} must be a non-empty string", name)
    if key == "from_env":
        if not _ENV_NAME.fullmatch(source):
            raise ValueProblem(f"secrets.{name}.from_env '{source}' is not a variable name", name)
        return Secret(name=name, from_env=source)
    if not (source.startswith("/") or source == "~" or source.startswith("~/")):
        # Relative to what? The file is read on the machine that runs the tool, at each run.
        raise ValueProblem(
            f"secrets.{name}.from_file must be an absolute path or start with ~/ (got '{source}')",
            name,
        )
    return Secret(name=name, from_file=source)
