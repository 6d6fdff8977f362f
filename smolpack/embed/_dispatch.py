"""`embed_payload`: pick the embedder by the stub's container.

Stage: create, the embedding step (payload → stub); formats/smolmachine.md,
"Embedding in executables". The first four bytes of the stub decide: ELF
(Linux stubs) or Mach-O, thin or universal (macOS stubs). Nothing else is an
executable smolpack can embed into.
"""

from __future__ import annotations

import os

from smolpack.embed._inputs import EmbedResult, check_target, open_regular, require_target
from smolpack.embed._output import ProgressFn
from smolpack.embed.elf import embed_elf, plan_elf
from smolpack.embed.macho import (
    FAT_MAGIC,
    FAT_MAGIC_64,
    MH_MAGIC_64,
    embed_macho,
    find_slice,
    plan_macho,
)
from smolpack.errors import UsageError

_ELF = b"\x7fELF"


def check_stub(stub: str | os.PathLike[str], target: str | None) -> str:
    """Check `stub` can carry a payload for `target` (headers only); return its target.

    `create` calls this before building, so a wrong stub fails in milliseconds, not after
    minutes of booting the build VM. Same errors as `embed_payload`.
    """
    check_target(target)
    label = os.fspath(stub)
    fd = open_regular(label, "stub")
    try:
        head = os.pread(fd, 4, 0)
        if head == _ELF:
            found = plan_elf(fd, label, 0).target
        elif len(head) == 4 and (
            int.from_bytes(head, "little") == MH_MAGIC_64
            or int.from_bytes(head, "big") in (FAT_MAGIC, FAT_MAGIC_64)
        ):
            offset, size = find_slice(fd, label)
            plan_macho(fd, label, offset, size, 0)
            found = "macos-arm64"
        else:
            raise UsageError(
                f"{label}: not an executable smolpack can embed into (expected an ELF or "
                "Mach-O launcher stub)"
            )
    finally:
        os.close(fd)
    require_target(label, found, target)
    return found


def embed_payload(
    stub: str | os.PathLike[str],
    payload: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: str | None = None,
    progress: ProgressFn | None = None,
) -> EmbedResult:
    """Write the executable `out`: `stub` carrying the standalone `payload`.

    ELF stubs get a section `.smolmachine`, Mach-O stubs a segment
    `__SMOLMACH` (then `result.needs_signing`: sign it on a Mac). `target`
    ("linux-x86_64", "linux-aarch64", "macos-arm64"), when given, must
    match the stub. `progress(done, total)` reports copied bytes. `out` is
    replaced atomically with a 0755 file, or left untouched on any error.
    Errors: UsageError (bad stub, target or path), HostError (writing
    failed), the payload's own errors (damaged payload).
    """
    fd = open_regular(os.fspath(stub), "stub")
    try:
        head = os.pread(fd, 4, 0)
    finally:
        os.close(fd)
    if head == _ELF:
        return embed_elf(stub, payload, out, target=target, progress=progress)
    if len(head) == 4 and (
        int.from_bytes(head, "little") == MH_MAGIC_64
        or int.from_bytes(head, "big") in (FAT_MAGIC, FAT_MAGIC_64)
    ):
        return embed_macho(stub, payload, out, target=target, progress=progress)
    raise UsageError(
        f"{os.fspath(stub)}: not an executable smolpack can embed into (expected an ELF or "
        "Mach-O launcher stub)"
    )
