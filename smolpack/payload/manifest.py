"""The manifest section: what the payload holds and which saved states it has.

Stage: payload (written at the end of create, read first at run time).
Implements formats/smolmachine.md, "Manifest section": UTF-8 JSON object,
unknown keys ignored (newer minors may add some). Stdlib only: the launcher
stub imports this module.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from smolpack.errors import BadLayout, UnsupportedVersion

MANIFEST_FORMAT_VERSION = 1
ENGINES = ("qemu", "krun")
ARCHES = ("x86_64", "aarch64")
HOST_OSES = ("linux", "macos")


def created_now() -> str:
    """ISO-8601 UTC timestamp, from SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRef:
    """One saved VM state and the sections that hold it."""

    # unique state name, e.g. "qemu-x86_64"
    name: str
    # engine that can restore it: "qemu" or "krun"
    engine: str
    # host CPU architecture it needs: "x86_64" or "aarch64"
    host_arch: str
    # host OS it needs: "linux" or "macos"
    host_os: str
    # names of the payload sections holding it, in the engine's order
    sections: tuple[str, ...]
    # what the engine recorded about the VM that saved it (QEMU: version, machine, CPU
    # model); the engine compares it with the host's before restoring. Written only when set.
    recorded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "engine": self.engine,
            "host_arch": self.host_arch,
            "host_os": self.host_os,
            "sections": list(self.sections),
        }
        if self.recorded:
            out["recorded"] = dict(self.recorded)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """The parsed manifest section."""

    # manifest schema version (not the container version); readers know 1
    format_version: int = MANIFEST_FORMAT_VERSION
    # smolpack version that wrote the payload
    smolpack_version: str
    # creation time, ISO-8601 UTC ("2026-11-22T09:00:00Z")
    created: str
    # guest CPU architecture: "x86_64" or "aarch64"
    guest_arch: str
    # machine config from the Smolfile; opaque to the payload format
    machine: dict[str, Any] = field(default_factory=dict)
    # saved states, best first
    states: tuple[StateRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "smolpack_version": self.smolpack_version,
            "created": self.created,
            "guest_arch": self.guest_arch,
            "machine": self.machine,
            "states": [s.to_dict() for s in self.states],
        }

    def to_json(self) -> bytes:
        # Sorted keys and fixed separators: the same manifest is the same bytes.
        return json.dumps(self.to_dict(), sort_keys=True, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, label: str = "manifest") -> Manifest:
        """Parse and validate; raise BadLayout naming the field on any problem."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise BadLayout(f"{label}: not valid UTF-8 JSON ({err})") from None
        return cls.from_dict(obj, label=label)

    @classmethod
    def from_dict(cls, obj: object, *, label: str = "manifest") -> Manifest:
        top = _Fields(obj, label, "manifest")
        version = top.get_int("format_version")
        if version != MANIFEST_FORMAT_VERSION:
            raise UnsupportedVersion(
                f"{label}: manifest format_version {version} is not supported "
                f"(this smolpack reads {MANIFEST_FORMAT_VERSION})"
            )
        states_raw = top.get_list("states")
        parsed = [_state(item, label, f"states[{i}]") for i, item in enumerate(states_raw)]
        names = [name for name, _ in parsed]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise BadLayout(f"{label}: field 'states[{i}].name' repeats state '{name}'")
        # A state for an engine or host this reader does not know (a newer smolpack's) is
        # skipped, not refused: the pack still runs from the states it does know, or cold.
        states = tuple(state for _, state in parsed if state is not None)
        return cls(
            format_version=version,
            smolpack_version=top.get_str("smolpack_version"),
            created=top.get_str("created"),
            guest_arch=top.get_choice("guest_arch", ARCHES),
            machine=top.get_dict("machine"),
            states=states,
        )


def _state(obj: object, label: str, where: str) -> tuple[str, StateRef | None]:
    """(name, state); the state is None when it is for an engine or host we do not know."""
    f = _Fields(obj, label, where)
    name = f.get_str("name")
    if (
        f.get_str("engine") not in ENGINES
        or f.get_str("host_arch") not in ARCHES
        or f.get_str("host_os") not in HOST_OSES
    ):
        return name, None  # its other fields are the newer writer's business
    sections = f.get_list("sections")
    for i, section in enumerate(sections):
        if not isinstance(section, str) or not section:
            raise BadLayout(f"{label}: field '{where}.sections[{i}]' must be a section name")
    recorded = f.get_dict("recorded") if "recorded" in f.obj else {}
    for key, value in recorded.items():
        if not isinstance(value, str):
            raise BadLayout(f"{label}: field '{where}.recorded.{key}' must be a string")
    return name, StateRef(
        name=name,
        engine=f.get_str("engine"),
        host_arch=f.get_str("host_arch"),
        host_os=f.get_str("host_os"),
        sections=tuple(sections),
        recorded=recorded,
    )


class _Fields:
    """Typed access to a JSON object's fields, with errors that name the field."""

    def __init__(self, obj: object, label: str, where: str) -> None:
        if not isinstance(obj, dict):
            raise BadLayout(f"{label}: '{where}' must be a JSON object")
        self.obj: dict[str, Any] = obj
        self.label = label
        self.prefix = "" if where == "manifest" else f"{where}."

    def _get(self, key: str, kind: type | tuple[type, ...], kind_text: str) -> Any:
        if key not in self.obj:
            raise BadLayout(f"{self.label}: field '{self.prefix}{key}' is missing")
        value = self.obj[key]
        # bool is an int in Python but not in JSON's eyes.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadLayout(
                f"{self.label}: field '{self.prefix}{key}' must be {kind_text} "
                f"(found {json.dumps(value)[:40]})"
            )
        return value

    def get_int(self, key: str) -> int:
        return int(self._get(key, int, "an integer"))

    def get_str(self, key: str) -> str:
        return str(self._get(key, str, "a string"))

    def get_list(self, key: str) -> list[Any]:
        return list(self._get(key, list, "a list"))

    def get_dict(self, key: str) -> dict[str, Any]:
        return dict(self._get(key, dict, "an object"))

    def get_choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get_str(key)
        if value not in allowed:
            raise BadLayout(
                f"{self.label}: field '{self.prefix}{key}' must be one of "
                f"{', '.join(allowed)} (found '{value}')"
            )
        return value
