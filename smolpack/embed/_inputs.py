"""Inputs and result of the embedding step: targets, the payload, the stub.

Stage: create, the embedding step (payload → stub); formats/smolmachine.md,
"Embedding in executables". Everything a user can get wrong here (a missing
file, a payload that is not a standalone `.smolmachine`, a stub for another
host) is turned into a one-line typed error before any output is written.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from smolpack.errors import UsageError
from smolpack.payload import open_payload

# Hosts a stub can be built for: "<os>-<arch>" as `platform.system().lower()`
# and the kernel's machine name spell them (Linux says aarch64, Apple arm64).
TARGETS = ("linux-x86_64", "linux-aarch64", "macos-arm64")
_SCAN_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbedResult:
    """What `embed_payload` wrote."""

    # the packed executable
    out: Path
    # one of TARGETS: the host the executable runs on
    target: str
    # "elf" or "macho"
    container: str
    # file offset of the payload origin (a multiple of RAW_ALIGN = 16 KiB)
    payload_offset: int
    # bytes of payload (its header's payload_size)
    payload_size: int
    # bytes of the whole executable
    size: int
    # True for Mach-O: the old signature was removed and macOS will not run
    # the file until it is signed again (`codesign --force -s - ...`)
    needs_signing: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadInput:
    """A validated standalone payload: copy [0, size) of `path` verbatim."""

    path: str
    # payload_size from its header; trailing bytes of the file are not copied
    size: int


def check_target(target: str | None) -> None:
    if target is not None and target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; expected one of: {', '.join(TARGETS)}")


def require_target(label: str, found: str, wanted: str | None) -> None:
    """Refuse a stub built for another host than the one asked for."""
    if wanted is not None and found != wanted:
        raise UsageError(f"{label}: is a {found} executable, but the target is {wanted}")


def open_regular(path: str, what: str) -> int:
    """Open an input file read-only, or raise a one-line UsageError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: the {what} is not a regular file")
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"{path}: cannot read the {what}: {err.strerror or err}") from None


def check_payload(path: str) -> PayloadInput:
    """Validate header and index of a standalone payload (bounded reads).

    Raises the payload's own errors (NotASmolmachine, PayloadTruncated, ...,
    formats/smolmachine.md "Errors") for a damaged file, and UsageError for a
    missing one or one that is already inside an executable: the embedder
    copies the payload verbatim, so it must start at offset 0.
    """
    os.close(open_regular(path, "payload"))
    with open_payload(path) as payload:
        if payload.location.container != "standalone":
            raise UsageError(
                f"{path}: this payload is already embedded in an executable "
                f"({payload.location.container}); pass the standalone .smolmachine file"
            )
        return PayloadInput(path=path, size=payload.header.payload_size)


def first_nonzero(fd: int, start: int, end: int) -> int | None:
    """Offset of the first non-zero byte of fd in [start, end), or None."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_SCAN_CHUNK, end - pos), pos)
        if not chunk:
            return None
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return pos + len(chunk) - len(stripped)
        pos += len(chunk)
    return None


def check_distinct(stub: str, payload: str, out: str) -> None:
    """Refuse an output path that names one of the inputs."""
    for path, what in ((stub, "stub"), (payload, "payload")):
        try:
            same = os.path.samefile(path, out)
        except OSError:
            same = False
        if same:
            raise UsageError(f"{out}: the output would overwrite the {what}; choose another path")
