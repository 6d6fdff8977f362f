"""Create stage, image → defaults: what the image's config says to run.

Implements formats/image-inputs.md, "Image defaults". Only the four fields the
Smolfile can override are read (OCI image spec, config `config` object); the
Smolfile wins field by field, a merge done by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smolpack.errors import ImageError


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageDefaults:
    # environment as ordered (name, value) pairs, from config Env ["K=V", ...]
    env: tuple[tuple[str, str], ...] = ()
    # working directory inside the guest; None when the image sets none
    workdir: str | None = None
    # Entrypoint argv; empty when unset
    entrypoint: tuple[str, ...] = ()
    # Cmd argv (arguments to the entrypoint, or the command itself); empty when unset
    cmd: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Any, *, label: str) -> ImageDefaults:
        """Parse an OCI/Docker image config document (already JSON-decoded)."""
        if not isinstance(config, dict):
            raise ImageError(f"{label}: image config is not a JSON object")
        inner = config.get("config") or {}
        if not isinstance(inner, dict):
            raise ImageError(f"{label}: image config: 'config' is not an object")
        env: list[tuple[str, str]] = []
        for item in _str_list(inner.get("Env"), "Env", label):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ImageError(f"{label}: image config: Env entry {item!r} is not NAME=VALUE")
            env.append((name, value))
        workdir = inner.get("WorkingDir") or None
        if workdir is not None and not isinstance(workdir, str):
            raise ImageError(f"{label}: image config: WorkingDir is not a string")
        return cls(
            env=tuple(env),
            workdir=workdir,
            entrypoint=tuple(_str_list(inner.get("Entrypoint"), "Entrypoint", label)),
            cmd=tuple(_str_list(inner.get("Cmd"), "Cmd", label)),
        )


def _str_list(value: Any, key: str, label: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{label}: image config: {key} is not a list of strings")
    return value


def check_platform(config: Any, *, goarch: str, label: str) -> None:
    """Refuse a config built for another OS or CPU (fields are optional)."""
    if not isinstance(config, dict):
        return
    os_name = config.get("os")
    arch = config.get("architecture")
    if os_name not in (None, "linux") or arch not in (None, goarch):
        raise ImageError(f"{label}: image is for {os_name}/{arch}, not linux/{goarch}")
