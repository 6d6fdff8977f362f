"""A saved krun state as payload sections, and back (create + run stages; formats/krun-state.md).

libkrun's `SAVE <dir>` writes three files; a pack stores them as sections of state
`krun-<arch>` (the host's architecture: a krun state holds host vCPU state), plus the disk
the saved memory expects when that is not the pack's shared `disk`:

| section                        | file            | kind  | codec | why                          |
|--------------------------------|-----------------|-------|-------|------------------------------|
| `krun-<arch>/memory.bin`       | memory.bin      | state | none  | mapped lazily, 16 KiB aligned |
| `krun-<arch>/checkpoint.bin`   | checkpoint.bin  | state | zstd  | small, read once             |
| `krun-<arch>/manifest.bin`     | manifest.bin    | state | zstd  | small, read once             |
| `krun-<arch>/disk`  (optional) | the flattened disk | disk | none | same instant as the memory   |

The StateRef lists them in that order. Pure: no libkrun, no files opened except in
`read_memory_layout`'s caller. Stdlib only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from smolpack.errors import EngineError
from smolpack.payload.layout import Codec, SectionKind
from smolpack.payload.manifest import StateRef

ENGINE = "krun"
FILES = ("memory.bin", "checkpoint.bin", "manifest.bin")
DISK = "disk"
# manifest.bin: u64 magic "SMOLPORT" (0x534d4f4c504f5254, stored little-endian), u32 version,
# u32 region count, then (u64 gpa, u64 len) per region. libkrun's decode_portable_manifest.
PORTABLE_MAGIC = 0x534D4F4C504F5254
PORTABLE_VERSION = 1
MAX_REGIONS = 4096


def state_name(host_arch: str) -> str:
    return f"{ENGINE}-{host_arch}"


def state_ref(*, host_arch: str, host_os: str, own_disk: bool) -> StateRef:
    """The manifest entry for a krun state saved on a `host_os`/`host_arch` host."""
    name = state_name(host_arch)
    names = [f"{name}/{f}" for f in FILES] + ([f"{name}/{DISK}"] if own_disk else [])
    return StateRef(
        name=name, engine=ENGINE, host_arch=host_arch, host_os=host_os, sections=tuple(names)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SectionSource:
    """One section the writer adds for a krun state."""

    name: str  # section name, e.g. "krun-x86_64/memory.bin"
    kind: SectionKind  # STATE, or DISK for the state's own disk
    path: Path  # file holding the bytes
    codec: Codec  # NONE for what is mapped in place, ZSTD for small blobs


def state_sections(ref: StateRef, state_dir: Path, disk: Path | None) -> list[SectionSource]:
    """What to write for `ref`, from the SAVE directory (and the state's own disk)."""
    layout = StateSections.from_ref(ref)
    out = [
        SectionSource(name=layout.memory, kind=SectionKind.STATE, path=state_dir / FILES[0],
                      codec=Codec.NONE),
        SectionSource(name=layout.checkpoint, kind=SectionKind.STATE, path=state_dir / FILES[1],
                      codec=Codec.ZSTD),
        SectionSource(name=layout.manifest, kind=SectionKind.STATE, path=state_dir / FILES[2],
                      codec=Codec.ZSTD),
    ]  # fmt: skip
    if (layout.disk != "disk") != (disk is not None):
        raise EngineError(f"state {ref.name}: its disk section and the disk given disagree")
    if disk is not None:
        out.append(
            SectionSource(name=layout.disk, kind=SectionKind.DISK, path=disk, codec=Codec.NONE)
        )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSections:
    """Which section holds which part of a krun state (run side)."""

    memory: str  # raw guest memory image
    checkpoint: str  # VM / vCPU / device state
    manifest: str  # memory layout (portable manifest)
    disk: str  # the disk the memory expects: "<state>/disk" or the pack's "disk"

    @classmethod
    def from_ref(cls, ref: StateRef) -> StateSections:
        if ref.engine != ENGINE:
            raise EngineError(f"state {ref.name} is a {ref.engine} state, not a krun state")
        names = list(ref.sections)
        expected = [f"{ref.name}/{f}" for f in FILES]
        if names[:3] != expected or len(names) not in (3, 4):
            raise EngineError(
                f"krun state {ref.name} must name sections {', '.join(expected)}"
                f" [+ {ref.name}/{DISK}], not {', '.join(names) or 'none'}"
            )
        if len(names) == 4 and names[3] != f"{ref.name}/{DISK}":
            raise EngineError(f"krun state {ref.name}: 4th section must be {ref.name}/{DISK}")
        disk = names[3] if len(names) == 4 else "disk"
        return cls(memory=names[0], checkpoint=names[1], manifest=names[2], disk=disk)


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    gpa: int  # guest physical address
    len: int  # bytes


def read_memory_layout(data: bytes, *, memory_size: int, label: str) -> list[MemoryRegion]:
    """Check manifest.bin as libkrun will, before handing anything over (clear errors)."""
    if len(data) < 16:
        raise EngineError(f"{label}: krun manifest.bin is truncated ({len(data)} bytes)")
    magic, version, count = struct.unpack_from("<QII", data, 0)
    if magic != PORTABLE_MAGIC:
        raise EngineError(f"{label}: krun manifest.bin has magic {magic:#x}, not SMOLPORT")
    if version != PORTABLE_VERSION:
        raise EngineError(f"{label}: krun manifest.bin version {version} is not supported")
    if not 1 <= count <= MAX_REGIONS or len(data) != 16 + 16 * count:
        raise EngineError(f"{label}: krun manifest.bin has {count} regions in {len(data)} bytes")
    regions, end, total = [], 0, 0
    for i in range(count):
        gpa, length = struct.unpack_from("<QQ", data, 16 + 16 * i)
        if length == 0 or (i and gpa < end):
            raise EngineError(f"{label}: krun manifest.bin region {i} is empty or overlaps")
        end, total = gpa + length, total + length
        regions.append(MemoryRegion(gpa, length))
    if total != memory_size:
        raise EngineError(f"{label}: krun memory is {memory_size} bytes, its manifest says {total}")
    return regions


def encode_memory_layout(regions: list[MemoryRegion]) -> bytes:
    """manifest.bin for `regions` (test vectors; libkrun writes the real ones)."""
    head = struct.pack("<QII", PORTABLE_MAGIC, PORTABLE_VERSION, len(regions))
    return head + b"".join(struct.pack("<QQ", r.gpa, r.len) for r in regions)
