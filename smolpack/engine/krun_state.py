"""A saved krun state as payload sections, and back (create + run stages; formats/krun-state.md).

libkrun's `SAVE <dir>` writes three files; a pack stores them as sections of state
`krun-<arch>` (the host's architecture: a krun state holds host vCPU state), plus the disk
the saved memory expects when that is not the pack's shared `disk`:

| section                     | from                  | kind  | codec | why                   |
|-----------------------------|-----------------------|-------|-------|-----------------------|
| `krun-<arch>/memory.data`   | memory.bin's non-zero pages | state | none | copied once to cache |
| `krun-<arch>/memory.map`    | where those pages go  | state | zstd  | small, read once      |
| `krun-<arch>/checkpoint.bin`| checkpoint.bin        | state | zstd  | small, read once      |
| `krun-<arch>/manifest.bin`  | manifest.bin          | state | zstd  | small, read once      |
| `krun-<arch>/cpu.json`      | the saving host's CPU | state | zstd  | checked before restore |
| `krun-<arch>/memory.refs` (opt.) | pages that are disk blocks | state | zstd | disk-refs.md |
| `krun-<arch>/disk` (optional) | the flattened disk  | disk  | none  | same instant as memory |

libkrun saves every memory region whole (on x86_64 also 512 MiB at 4 GiB that a small guest
never touches), so memory.bin is mostly zeros: storing only its non-zero pages keeps the pack,
its writing and its verification proportional to what the guest used. The StateRef lists the
sections in that order. Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smolpack.engine.disk_refs import split_in_place
from smolpack.errors import EngineError
from smolpack.host import CpuId
from smolpack.payload.layout import Codec, SectionKind
from smolpack.payload.manifest import StateRef

ENGINE = "krun"
FILES = ("memory.bin", "checkpoint.bin", "manifest.bin")  # what libkrun's SAVE writes
SECTIONS = ("memory.data", "memory.map", "checkpoint.bin", "manifest.bin", "cpu.json")
CPU_FILE = "cpu.json"  # written beside libkrun's files by the build: the saving host's CPU
MEMORY_REFS = "memory.refs"  # memory.bin's pages that are blocks of the state's disk
DISK = "disk"
# memory.map: magic "SMOLMMAP", u32 version, u32 extent count, u64 memory size, then
# (u64 offset, u64 length) per extent, ascending, page-aligned, not touching.
MAP_MAGIC = b"SMOLMMAP"
MAP_VERSION = 1
MAP_PAGE = 4096
MAX_EXTENTS = 1 << 20
_SCAN = 1 << 20
# manifest.bin: u64 magic "SMOLPORT" (0x534d4f4c504f5254, stored little-endian), u32 version,
# u32 region count, then (u64 gpa, u64 len) per region. libkrun's decode_portable_manifest.
PORTABLE_MAGIC = 0x534D4F4C504F5254
PORTABLE_VERSION = 1
MAX_REGIONS = 4096


def state_name(host_arch: str) -> str:
    return f"{ENGINE}-{host_arch}"


def state_ref(*, host_arch: str, host_os: str, own_disk: bool, refs: bool = True) -> StateRef:
    """The manifest entry for a krun state saved on a `host_os`/`host_arch` host."""
    name = state_name(host_arch)
    names = [f"{name}/{f}" for f in SECTIONS] + [f"{name}/{MEMORY_REFS}"] * refs
    names += [f"{name}/{DISK}"] if own_disk else []
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


def state_sections(
    ref: StateRef, state_dir: Path, disk: Path | None, memory_disk: Path | None = None
) -> list[SectionSource]:
    """What to write for `ref`, from the SAVE directory (and the state's own disk).

    memory.bin is split here into memory.data + memory.map (beside it) and then removed;
    with memory.refs, its pages that are blocks of `memory_disk` (the disk the memory
    expects) are left out first and listed there (formats/disk-refs.md).
    """
    layout = StateSections.from_ref(ref)
    memory = state_dir / FILES[0]
    refs: list[SectionSource] = []
    if layout.memory_refs is not None:
        if memory_disk is None:
            raise ValueError("a krun state with memory.refs needs the disk its memory expects")
        split_in_place(memory, memory_disk, state_dir / MEMORY_REFS)
        refs.append(SectionSource(name=layout.memory_refs, kind=SectionKind.STATE,
                                  path=state_dir / MEMORY_REFS, codec=Codec.ZSTD))  # fmt: skip
    pack_memory(memory, state_dir / "memory.data", state_dir / "memory.map")
    memory.unlink()
    out = [
        SectionSource(name=layout.memory, kind=SectionKind.STATE, path=state_dir / "memory.data",
                      codec=Codec.NONE),
        SectionSource(name=layout.memory_map, kind=SectionKind.STATE,
                      path=state_dir / "memory.map", codec=Codec.ZSTD),
        SectionSource(name=layout.checkpoint, kind=SectionKind.STATE, path=state_dir / FILES[1],
                      codec=Codec.ZSTD),
        SectionSource(name=layout.manifest, kind=SectionKind.STATE, path=state_dir / FILES[2],
                      codec=Codec.ZSTD),
        SectionSource(name=layout.cpu, kind=SectionKind.STATE, path=state_dir / CPU_FILE,
                      codec=Codec.ZSTD),
        *refs,
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

    memory: str  # the non-zero pages of the guest memory image, back to back
    memory_map: str  # where they go (MemoryMap)
    checkpoint: str  # VM / vCPU / device state
    manifest: str  # memory layout (portable manifest)
    cpu: str  # the saving host's CPU vendor and flags (cpu.json)
    disk: str  # the disk the memory expects: "<state>/disk" or the pack's "disk"
    memory_refs: str | None = None  # memory pages that are blocks of `disk`

    @classmethod
    def from_ref(cls, ref: StateRef) -> StateSections:
        if ref.engine != ENGINE:
            raise EngineError(f"state {ref.name} is a {ref.engine} state, not a krun state")
        names = list(ref.sections)
        n = len(SECTIONS)
        expected = [f"{ref.name}/{f}" for f in SECTIONS]
        refs, disk = f"{ref.name}/{MEMORY_REFS}", f"{ref.name}/{DISK}"
        tails: list[list[str]] = [[], [refs], [disk], [refs, disk]]
        if names[:n] != expected or names[n:] not in tails:
            raise EngineError(
                f"krun state {ref.name} must name sections {', '.join(expected)}"
                f" [+ {refs}] [+ {disk}], not {', '.join(names) or 'none'}"
            )
        return cls(memory=names[0], memory_map=names[1], checkpoint=names[2],
                   manifest=names[3], cpu=names[4], disk=disk if disk in names else "disk",
                   memory_refs=refs if refs in names else None)  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class MemoryMap:
    """Where memory.data's bytes go in the memory image; everything else is zero."""

    size: int  # bytes of the whole memory image (memory.bin)
    extents: tuple[tuple[int, int], ...]  # (offset, length), ascending

    @property
    def data_size(self) -> int:
        return sum(length for _, length in self.extents)

    def encode(self) -> bytes:
        head = MAP_MAGIC + struct.pack("<IIQ", MAP_VERSION, len(self.extents), self.size)
        return head + b"".join(struct.pack("<QQ", off, n) for off, n in self.extents)

    @classmethod
    def decode(cls, data: bytes, *, data_size: int, label: str) -> MemoryMap:
        """Check memory.map against memory.data's size before anything is written."""
        if len(data) < 24 or data[:8] != MAP_MAGIC:
            raise EngineError(f"{label}: krun memory.map has no SMOLMMAP header")
        version, count, size = struct.unpack_from("<IIQ", data, 8)
        if version != MAP_VERSION:
            raise EngineError(f"{label}: krun memory.map version {version} is not supported")
        if count > MAX_EXTENTS or len(data) != 24 + 16 * count:
            raise EngineError(f"{label}: krun memory.map has {count} extents in {len(data)} bytes")
        extents, end = [], 0
        for i in range(count):
            off, n = struct.unpack_from("<QQ", data, 24 + 16 * i)
            if n == 0 or off < end or off + n > size or (off | n) % MAP_PAGE:
                raise EngineError(f"{label}: krun memory.map extent {i} is out of order or place")
            extents.append((off, n))
            end = off + n
        found = cls(size, tuple(extents))
        if found.data_size != data_size:
            raise EngineError(
                f"{label}: krun memory.map places {found.data_size} bytes,"
                f" memory.data holds {data_size}"
            )
        return found


def pack_memory(memory: Path, data_out: Path, map_out: Path) -> MemoryMap:
    """Split a memory image into its non-zero pages (data_out) and their places (map_out)."""
    zero = bytes(MAP_PAGE)
    extents: list[list[int]] = []
    size = memory.stat().st_size
    if size % MAP_PAGE:
        raise EngineError(f"krun memory.bin is {size} bytes, not whole {MAP_PAGE}-byte pages")
    with memory.open("rb") as src, data_out.open("wb") as out:
        for start, length in _data_ranges(src.fileno(), size):
            pos = start
            while pos < start + length:
                chunk = os.pread(src.fileno(), min(_SCAN, start + length - pos), pos)
                if not chunk:
                    raise EngineError(f"krun memory.bin shrank while it was read (at {pos})")
                if chunk.count(0) != len(chunk):  # C speed; most chunks are all zero
                    for i in range(0, len(chunk), MAP_PAGE):
                        page = chunk[i : i + MAP_PAGE]
                        if page == zero:
                            continue
                        off = pos + i
                        if extents and extents[-1][0] + extents[-1][1] == off:
                            extents[-1][1] += MAP_PAGE
                        else:
                            extents.append([off, MAP_PAGE])
                        out.write(page)
                pos += len(chunk)
    found = MemoryMap(size, tuple((off, n) for off, n in extents))
    map_out.write_bytes(found.encode())
    return found


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Page-aligned ranges of fd that may hold data (SEEK_DATA/SEEK_HOLE; all of it if the
    filesystem cannot tell)."""
    ranges, pos = [], 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            start = data - data % MAP_PAGE
            end = min(size, -(-hole // MAP_PAGE) * MAP_PAGE)
            ranges.append((start, end - start))
            pos = end
    except OSError:
        return [(0, size)]
    return ranges


def unpack_memory(
    mmap: MemoryMap, read: Callable[[int, int], bytes], dest_fd: int, sha256: bytes, label: str
) -> None:
    """Write the memory image to dest_fd: memory.data's bytes (via `read(offset, n)`, in
    order, hashed against the section digest) at their places, holes elsewhere."""
    hasher = hashlib.sha256()
    src = 0
    for off, length in mmap.extents:
        done = 0
        while done < length:
            chunk = read(src, min(_SCAN, length - done))
            hasher.update(chunk)
            os.pwrite(dest_fd, chunk, off + done)
            src += len(chunk)
            done += len(chunk)
    os.ftruncate(dest_fd, mmap.size)
    if hasher.digest() != sha256:
        raise EngineError(f"{label}: krun memory.data does not match its digest")


def encode_cpu(cpu: CpuId) -> bytes:
    """cpu.json: {"vendor": "AuthenticAMD", "flags": [...sorted]} (/proc/cpuinfo's words)."""
    return json.dumps({"vendor": cpu.vendor, "flags": sorted(cpu.flags)}).encode()


def decode_cpu(data: bytes, label: str) -> CpuId:
    try:
        obj = json.loads(data)
        vendor, flags = obj["vendor"], obj["flags"]
        if not isinstance(vendor, str) or not all(isinstance(f, str) for f in flags):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise EngineError(f"{label}: krun cpu.json is malformed") from None
    return CpuId(vendor, frozenset(flags))


def restore_blocker(saved: CpuId, here: CpuId) -> str | None:
    """Why a state saved on `saved` cannot restore `here` (None: it may). A vCPU state holds
    the saving CPU's features: a guest that found AVX-512 there dies without it here."""
    missing = saved.missing_here(here)
    if not missing:
        return None
    more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
    return "it was saved on a CPU with what this one lacks: " + ", ".join(missing[:5]) + more
