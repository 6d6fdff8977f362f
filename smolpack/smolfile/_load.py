"""Stage: create, Smolfile. `load_smolfile`: TOML -> validated `SmolConfig`.

Implements formats/smolfile.md: the key schema, smolvm compatibility (the
`[dev]` merge, `[pack]` as an alias of `[artifact]`, smolvm-only keys accepted
with one warning each), and the error format `FILE:LINE: problem` raised as
`SmolfileError` (exit code 3). This is the only place a raw dict is seen.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from smolpack.errors import SmolfileError
from smolpack.smolfile import _values
from smolpack.smolfile._locate import KeyLocator, KeyPath, toml_error_position
from smolpack.smolfile._model import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    ArtifactOverrides,
    ImageRef,
    NetworkPolicy,
    SmolConfig,
    one_line,
)

SMOLFILE_NAME = "Smolfile"
MAX_SMOLFILE_BYTES = 1 << 20  # a hand-written config; anything bigger is a wrong path
MAX_CPUS = 64
MIN_MEMORY_MIB = 64  # below this the guest kernel plus agent do not come up
MAX_MEMORY_MIB = 128 * 1024  # 128 GiB: beyond any host we pack for; catches GiB/MiB mixups

_TOP_KEYS = (
    "image", "entrypoint", "cmd", "env", "workdir", "cpus", "memory", "net", "init",
    "volumes", "ports", "host_cwd",
)  # fmt: skip
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "network": ("allow_hosts", "allow_cidrs"),
    "dev": ("init", "env", "workdir", "volumes", "ports"),
    "artifact": ("cpus", "memory", "entrypoint", "cmd", "oci_platform"),
    "pack": ("cpus", "memory", "entrypoint", "cmd", "oci_platform"),
    "auth": ("ssh_agent",),
    "secrets": (),  # any NAME: checked by parse_secret
}
# smolvm keys with no meaning in a pack: accepted (any value), one warning each.
IGNORED_KEYS: dict[str, str] = {
    "gpu": "no GPU in packs",
    "gpu_vram": "no GPU in packs",
    "cuda": "no CUDA forwarding in packs",
    "auto_graph": "no CUDA forwarding in packs",
    "rosetta": "no Rosetta translation in packs",
    "docker_socket": "no host socket bridge in packs",
    "storage": "the pack's disk is sized from the image and build output",
    "overlay": "the pack's disk is sized from the image and build output",
    "user": "the tool runs as root; user switching is not supported yet",
    "health": "a pack runs one command, not a service",
    "restart": "a pack runs one command, not a service",
    "service": "a pack runs one command, not a service",
    "fork": "no VM forking in packs",
}
_IGNORED_IN_SECTION: dict[KeyPath, str] = {}

T = TypeVar("T")


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'float'} {value}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _name(path: KeyPath) -> str:
    return ".".join(path)


class _Reader:
    """Typed access to the parsed document with file:line error reporting."""

    def __init__(self, source_name: str, source: str, base_dir: Path) -> None:
        self.source_name = source_name
        self.base_dir = base_dir
        self.locator = KeyLocator(source)
        self._warnings: list[tuple[int, str]] = []  # (line, text); 0 = whole file

    def line(self, path: KeyPath) -> int | None:
        return self.locator.line_of(path)

    def error(self, path: KeyPath, problem: str, needle: str = "") -> SmolfileError:
        line = self.locator.line_of_item(path, needle) if path else None
        return SmolfileError(self.source_name, one_line(problem), line=line)

    def warn(self, path: KeyPath, text: str) -> None:
        line = self.line(path) if path else None
        where = f"{self.source_name}:{line}" if line is not None else self.source_name
        self._warnings.append((line or 0, f"{where}: warning: {one_line(text)}"))

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warning lines in file order (stable for one line)."""
        return tuple(text for _, text in sorted(self._warnings, key=lambda w: w[0]))

    def check_keys(self, table: dict[str, Any], prefix: KeyPath, known: tuple[str, ...]) -> None:
        """Reject keys in neither schema; warn once for each ignored smolvm key."""
        for key, value in table.items():
            path = prefix + (key,)
            if key in known and path not in _IGNORED_IN_SECTION:
                continue
            if path in _IGNORED_IN_SECTION:
                self.warn(
                    path, f"'{_name(path)}' is ignored by smolpack ({_IGNORED_IN_SECTION[path]})"
                )
                continue
            if not prefix and key in IGNORED_KEYS:
                shown = f"[{key}]" if isinstance(value, dict) else key
                self.warn(path, f"'{shown}' is ignored by smolpack ({IGNORED_KEYS[key]})")
                continue
            choices = list(known) if prefix else [*known, *_SECTION_KEYS]
            close = difflib.get_close_matches(key, choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if not prefix and isinstance(value, dict):
                raise self.error(path, f"unknown section [{key}]{hint}")
            where = f" in [{_name(prefix)}]" if prefix else ""
            raise self.error(path, f"unknown key '{key}'{where}{hint}")

    # -- typed getters ------------------------------------------------------

    def _typed(self, table: dict[str, Any], path: KeyPath, kind: type[T], what: str) -> T | None:
        value = table.get(path[-1])
        if value is None:
            return None
        # bool is an int subclass in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(path, f"{_name(path)} must be {what} (got {_toml_type(value)})")
        return value

    def table(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        return self._typed(doc, (key,), dict, "a table") or {}

    def boolean(self, table: dict[str, Any], path: KeyPath) -> bool | None:
        return self._typed(table, path, bool, "true or false")

    def string(self, table: dict[str, Any], path: KeyPath) -> str | None:
        return self._typed(table, path, str, "a string")

    def integer(self, table: dict[str, Any], path: KeyPath, low: int, high: int) -> int | None:
        value = self._typed(table, path, int, "an integer")
        if value is not None and not low <= value <= high:
            raise self.error(path, f"{_name(path)} must be between {low} and {high} (got {value})")
        return value

    def memory(self, table: dict[str, Any], path: KeyPath) -> int | None:
        value = self._typed(table, path, int, "an integer number of MiB")
        if value is not None and value < MIN_MEMORY_MIB:
            raise self.error(
                path, f"{_name(path)} must be at least {MIN_MEMORY_MIB} MiB (got {value})"
            )
        if value is not None and value > MAX_MEMORY_MIB:
            raise self.error(
                path, f"{_name(path)} must be at most {MAX_MEMORY_MIB} MiB (got {value})"
            )
        return value

    def strings(
        self, table: dict[str, Any], path: KeyPath, *, allow_empty_items: bool = True
    ) -> list[str]:
        value = table.get(path[-1], [])
        if not isinstance(value, list):
            raise self.error(
                path, f"{_name(path)} must be an array of strings (got {_toml_type(value)})"
            )
        for index, item in enumerate(value, start=1):
            if not isinstance(item, str):
                raise self.error(
                    path,
                    f"{_name(path)} must be an array of strings"
                    f" (item {index} is {_toml_type(item)})",
                    str(item).lower() if isinstance(item, bool) else str(item),
                )
            if not allow_empty_items and not item.strip():
                raise self.error(path, f"{_name(path)} item {index} is empty", '""')
        return value

    def parsed(self, path: KeyPath, parse: Callable[..., T], *args: Any) -> T:
        """Run a `_values` parser, locating its `ValueProblem` at `path`."""
        try:
            return parse(*args)
        except _values.ValueProblem as problem:
            raise self.error(path, problem.problem, problem.needle) from None


def _read_source(path: Path, name: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SMOLFILE_BYTES + 1)
    except FileNotFoundError:
        raise SmolfileError(name, "no such file") from None
    except OSError as err:
        raise SmolfileError(name, f"cannot read: {err.strerror or err}") from None
    if len(data) > MAX_SMOLFILE_BYTES:
        raise SmolfileError(name, f"file is larger than {MAX_SMOLFILE_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SmolfileError(name, "invalid UTF-8 text", line=line) from None


def load_smolfile(path: str | Path) -> SmolConfig:
    """Read, validate and merge a Smolfile; `path` may be its directory.

    Raises `SmolfileError` (one line: file, line, key). Warnings are returned
    in `SmolConfig.warnings`, never printed here.
    """
    given = Path(path)
    name = str(path)
    if given.is_dir():
        given = given / SMOLFILE_NAME
        name = str(given)
    source = _read_source(given, name)
    reader = _Reader(name, source, given.absolute().parent)
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as err:
        text, line = toml_error_position(str(err), reader.locator.last_line)
        raise SmolfileError(name, f"invalid TOML: {text}", line=line) from None
    return _build(reader, doc, given.absolute())


def _build(r: _Reader, doc: dict[str, Any], source_path: Path) -> SmolConfig:
    r.check_keys(doc, (), (*_TOP_KEYS, *_SECTION_KEYS))
    dev = r.table(doc, "dev")
    network = r.table(doc, "network")
    artifact_key = "artifact" if "artifact" in doc or "pack" not in doc else "pack"
    if "artifact" in doc and "pack" in doc:
        r.warn(
            ("pack",), "'[pack]' is ignored by smolpack ([artifact] takes precedence, as in smolvm)"
        )
    for section, table in (("dev", dev), ("network", network)):
        r.check_keys(table, (section,), _SECTION_KEYS[section])
    for section in ("artifact", "pack", "auth"):
        r.check_keys(r.table(doc, section), (section,), _SECTION_KEYS[section])
    secrets = tuple(
        r.parsed(("secrets", name), _values.parse_secret, name, value)
        for name, value in r.table(doc, "secrets").items()
    )
    ssh_agent = r.boolean(r.table(doc, "auth"), ("auth", "ssh_agent"))
    host_cwd = r.string(doc, ("host_cwd",))
    if host_cwd is not None and host_cwd not in ("off", "ro", "rw"):
        raise r.error(("host_cwd",), f'host_cwd must be "off", "ro" or "rw" (got \'{host_cwd}\')')
    artifact = r.table(doc, artifact_key)

    image = _image(r, doc)
    entrypoint = r.strings(doc, ("entrypoint",), allow_empty_items=False)
    cmd = r.strings(doc, ("cmd",))

    # [dev] merge, exactly as smolvm's build_create_params: a non-empty [dev]
    # list replaces the top-level one; env is top-level then [dev] (later wins);
    # [dev] workdir wins over the top-level one.
    chosen: dict[str, KeyPath] = {}
    for key in ("init", "volumes", "ports"):
        r.strings(doc, (key,), allow_empty_items=key != "init")
        dev_items = r.strings(dev, ("dev", key), allow_empty_items=key != "init")
        chosen[key] = ("dev", key) if dev_items else (key,)
    init = r.strings(dev if chosen["init"][0] == "dev" else doc, chosen["init"])
    volume_specs = r.strings(dev if chosen["volumes"][0] == "dev" else doc, chosen["volumes"])
    port_specs = r.strings(dev if chosen["ports"][0] == "dev" else doc, chosen["ports"])
    env: dict[str, str] = {}
    for table, env_path in ((doc, ("env",)), (dev, ("dev", "env"))):
        for entry in r.strings(table, env_path):
            key, value = r.parsed(env_path, _values.parse_env, entry)
            env[key] = value
    top_workdir = r.string(doc, ("workdir",))
    dev_workdir = r.string(dev, ("dev", "workdir"))
    workdir = dev_workdir if dev_workdir is not None else top_workdir
    workdir_path: KeyPath = ("dev", "workdir") if dev_workdir is not None else ("workdir",)
    if workdir is not None and not workdir.startswith("/"):
        raise r.error(
            workdir_path, f"{_name(workdir_path)} must be an absolute guest path (got '{workdir}')"
        )

    try:
        cwd: Path | None = Path.cwd()
    except OSError:  # the current directory was removed
        cwd = None
    volumes_and_warnings = [
        r.parsed(chosen["volumes"], _values.parse_volume, spec, r.base_dir, cwd)
        for spec in volume_specs
    ]
    for _, warning in volumes_and_warnings:
        if warning is not None:
            r.warn(chosen["volumes"], warning)
    volumes = tuple(volume for volume, _ in volumes_and_warnings)
    ports = r.parsed(chosen["ports"], _values.parse_ports, port_specs)

    policy = NetworkPolicy(
        allow_hosts=tuple(
            r.parsed(("network", "allow_hosts"), _values.parse_allow_host, h)
            for h in r.strings(network, ("network", "allow_hosts"))
        ),
        allow_cidrs=tuple(
            r.parsed(("network", "allow_cidrs"), _values.parse_allow_cidr, c)
            for c in r.strings(network, ("network", "allow_cidrs"))
        ),
    )
    net = r.boolean(doc, ("net",))
    if policy.allow_hosts or policy.allow_cidrs:
        if net is False:
            r.warn(
                ("net",),
                "'net = false' is overridden: a non-empty [network] allow list turns"
                " the network on",
            )
        net = True

    overrides = ArtifactOverrides(
        cpus=r.integer(artifact, (artifact_key, "cpus"), 1, MAX_CPUS),
        memory_mib=r.memory(artifact, (artifact_key, "memory")),
        entrypoint=tuple(
            r.strings(artifact, (artifact_key, "entrypoint"), allow_empty_items=False)
        ),
        cmd=tuple(r.strings(artifact, (artifact_key, "cmd"))),
        oci_platform=_oci_platform(r, artifact, (artifact_key, "oci_platform")),
    )
    if image is None:
        r.warn((), "no 'image' set; 'smolpack create' will need an image")
    cpus = r.integer(doc, ("cpus",), 1, MAX_CPUS)
    memory_mib = r.memory(doc, ("memory",))
    return SmolConfig(
        source_path=source_path,
        source_name=r.source_name,
        image=image,
        entrypoint=tuple(entrypoint),
        cmd=tuple(cmd),
        env=tuple(env.items()),
        workdir=workdir,
        cpus=cpus if cpus is not None else DEFAULT_CPUS,
        memory_mib=memory_mib if memory_mib is not None else DEFAULT_MEMORY_MIB,
        net=bool(net),
        init=tuple(init),
        volumes=volumes,
        ports=ports,
        network=policy,
        secrets=secrets,
        ssh_agent=bool(ssh_agent),
        host_cwd=host_cwd or "off",
        artifact=overrides,
        warnings=r.warnings,
    )


def _oci_platform(r: _Reader, table: dict[str, Any], path: KeyPath) -> str | None:
    text = r.string(table, path)
    if text is None:
        return None
    return r.parsed(path, _values.parse_oci_platform, text)


def _image(r: _Reader, doc: dict[str, Any]) -> ImageRef | None:
    raw = r.string(doc, ("image",))
    if raw is None:
        return None
    line = r.line(("image",))
    return r.parsed(("image",), _values.parse_image, raw, r.base_dir, line)
