"""Embed a payload into a Mach-O stub as the segment `__SMOLMACH`.

Stage: create, the embedding step (payload → stub) for macOS arm64 stubs.
Implements formats/smolmachine.md, "Embedding in executables", Mach-O. We
cannot run macOS binaries here; the shape below is the one linkers emit for
`-sectcreate` and that Deno's libsui ships (`__SUI`), checked by the tests
against a real PyInstaller bootloader with LIEF.

Output (always a thin arm64 file; a universal input gives its arm64 slice):

    [0, L)                 header, load commands, __TEXT, __DATA_CONST, __DATA (verbatim)
    [L, L + S)             __SMOLMACH: the payload, zero-padded to S = size rounded up to 16 KiB
    [L + S, ...)           __LINKEDIT, moved up by S (PyInstaller's archive stays its tail)

`L` is the old file offset of `__LINKEDIT` (16 KiB-aligned on arm64). The new
`LC_SEGMENT_64` goes right before `__LINKEDIT`'s: vmaddr = old `__LINKEDIT`
vmaddr, vmsize = filesize = S, maxprot = initprot = `VM_PROT_READ`, no
sections (section_64.offset is 32-bit; a segment's is 64-bit). `__LINKEDIT`
moves up by S in the file and in memory, and every load command offset that
points into it (symbol and string tables, dyld info, function starts, data in
code, ...) moves with it. Segments stay contiguous and ordered in file and
VM, as dyld and `codesign --strict` demand; `__LINKEDIT` stays last.

The old `LC_CODE_SIGNATURE` is removed and its bytes at the end of
`__LINKEDIT` dropped, as `codesign --remove-signature` (and PyInstaller before
it appends its archive) does: the signature covered bytes that moved, so it
is wrong, not just stale. macOS arm64 runs only signed code, so the result
must be signed on a Mac: `codesign --force -s - --entitlements hv.plist tool`
(ad-hoc, with `com.apple.security.hypervisor`). That adds LC_CODE_SIGNATURE
back in the header space the removal freed.

Refused, with a clear error: other CPUs, non-executables, a stub that already
has `__SMOLMACH`, stubs with `LC_DYLD_CHAINED_FIXUPS` (their
`dyld_chained_starts_in_image.seg_count` must equal the segment count since
macOS 26, which would need the fixups blob rewritten; PyInstaller's
bootloaders use dyld info opcodes, which name segments by index, and
`__LINKEDIT` has no fixups), unknown load commands (they might hold file
offsets we would not move), no room for one more load command.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from smolpack.embed._inputs import (
    EmbedResult,
    check_distinct,
    check_payload,
    check_target,
    first_nonzero,
    open_regular,
    require_target,
)
from smolpack.embed._output import Move, ProgressFn, write_executable
from smolpack.errors import UsageError
from smolpack.payload.layout import RAW_ALIGN, align_up
from smolpack.payload.locate import MACHO_SEGMENT

MH_MAGIC_64 = 0xFEEDFACF
FAT_MAGIC, FAT_MAGIC_64 = 0xCAFEBABE, 0xCAFEBABF  # stored big-endian
CPU_ARM64, CPU_X86_64 = 0x0100000C, 0x01000007
HEADER = struct.Struct("<IiiIIIII")  # mach_header_64, 32 bytes
SEGMENT = struct.Struct("<II16sQQQQiiII")  # segment_command_64, 72 bytes
SECTION = struct.Struct("<16s16sQQIIIIIIII")  # section_64, 80 bytes
_FAT_ARCH = struct.Struct(">iiIII")
_FAT_ARCH_64 = struct.Struct(">iiQQII")
_MH_EXECUTE = 2
_VM_PROT_READ = 1
_LC_SEGMENT_64 = 0x19
_LC_CODE_SIGNATURE = 0x1D
_LC_DYLD_CHAINED_FIXUPS = 0x80000034
_MAX_CMDS = 16 * 1024 * 1024
_CPU_NAMES = {CPU_ARM64: "arm64", CPU_X86_64: "x86_64"}

# Load commands that hold file offsets, and where: byte positions of u32
# offset fields (u64 for LC_NOTE). An offset at or past __LINKEDIT moves.
_OFFSETS32: dict[int, tuple[int, ...]] = {
    0x02: (8, 16),  # LC_SYMTAB: symoff, stroff
    0x0B: (
        32,
        40,
        48,
        56,
        64,
        72,
    ),  # LC_DYSYMTAB: toc, modtab, extrefsym, indirectsym, extrel, locrel
    0x16: (8,),  # LC_TWOLEVEL_HINTS
    0x22: (8, 16, 24, 32, 40),  # LC_DYLD_INFO: rebase, bind, weak_bind, lazy_bind, export
    0x80000022: (8, 16, 24, 32, 40),  # LC_DYLD_INFO_ONLY
    _LC_CODE_SIGNATURE: (8,),  # linkedit_data_command: dataoff
    0x1E: (8,),  # LC_SEGMENT_SPLIT_INFO
    0x26: (8,),  # LC_FUNCTION_STARTS
    0x29: (8,),  # LC_DATA_IN_CODE
    0x2B: (8,),  # LC_DYLIB_CODE_SIGN_DRS
    0x2E: (8,),  # LC_LINKER_OPTIMIZATION_HINT
    0x36: (8,),  # LC_ATOM_INFO
    0x80000033: (8,),  # LC_DYLD_EXPORTS_TRIE
}
_NOTE = 0x31  # LC_NOTE: u64 offset at 24
# Load commands without file offsets into __LINKEDIT.
_NO_OFFSETS = {
    0x04, 0x05, 0x0C, 0x0D, 0x0E, 0x0F, 0x12, 0x13, 0x14, 0x15, 0x1B, 0x20, 0x21, 0x24, 0x25,
    0x27, 0x2A, 0x2C, 0x2D, 0x2F, 0x30, 0x32, 0x80000018, 0x8000001C, 0x8000001F, 0x80000023,
    0x80000028,
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class MachoPlan:
    """Where everything goes; computed from the stub's load commands alone."""

    # start of the arm64 image in the input (non-zero for a fat file's slice)
    slice_offset: int
    # header + load commands, zero-padded over the old commands' extent
    header: bytes
    # old __LINKEDIT file offset = the payload origin
    payload_offset: int
    moves: tuple[Move, ...]
    size: int


@dataclass(slots=True)
class _Segment:
    name: bytes
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int


def _read(fd: int, label: str, size: int, offset: int, what: str) -> bytes:
    if offset + size > os.fstat(fd).st_size:
        raise UsageError(f"{label}: damaged Mach-O: {what} ends past the end of the file")
    return os.pread(fd, size, offset)


def find_slice(fd: int, label: str) -> tuple[int, int]:
    """(offset, size) of the arm64 image: the whole file, or a fat file's slice."""
    size = os.fstat(fd).st_size
    magic = int.from_bytes(_read(fd, label, 4, 0, "header"), "big")
    if magic not in (FAT_MAGIC, FAT_MAGIC_64):
        return 0, size
    nfat = int.from_bytes(_read(fd, label, 4, 4, "fat header"), "big")
    entry = _FAT_ARCH if magic == FAT_MAGIC else _FAT_ARCH_64
    if nfat > 64:
        raise UsageError(f"{label}: universal binary with {nfat} slices; not a stub we know")
    found = []
    for i in range(nfat):
        cputype, _, offset, length, *_ = entry.unpack(
            _read(fd, label, entry.size, 8 + i * entry.size, "fat_arch")
        )
        found.append(_CPU_NAMES.get(cputype, hex(cputype)))
        if cputype == CPU_ARM64:
            if offset + length > size:
                raise UsageError(f"{label}: damaged universal binary: arm64 slice past the end")
            return offset, length
    raise UsageError(
        f"{label}: universal binary without an arm64 slice (has {', '.join(found) or 'none'}); "
        "the macOS target is macos-arm64"
    )


def plan_macho(
    fd: int, label: str, slice_offset: int, slice_size: int, payload_size: int
) -> MachoPlan:
    """Lay out stub + payload; reads only the header and load commands."""
    fields = list(HEADER.unpack(_read(fd, label, HEADER.size, slice_offset, "Mach-O header")))
    magic, cputype, _, filetype, ncmds, sizeofcmds, _, _ = fields
    if magic != MH_MAGIC_64:
        raise UsageError(f"{label}: not a 64-bit little-endian Mach-O executable")
    if cputype != CPU_ARM64:
        name = _CPU_NAMES.get(cputype, hex(cputype))
        raise UsageError(f"{label}: is a macos-{name} executable; the macOS target is macos-arm64")
    if filetype != _MH_EXECUTE:
        raise UsageError(f"{label}: Mach-O file type {filetype} is not an executable")
    if sizeofcmds > _MAX_CMDS:
        raise UsageError(f"{label}: Mach-O load commands of {sizeofcmds} bytes are too large")
    raw = _read(fd, label, sizeofcmds, slice_offset + HEADER.size, "load commands")
    cmds: list[bytearray] = []
    pos = 0
    for i in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", raw, pos) if pos + 8 <= len(raw) else (0, 0)
        if cmdsize < 8 or pos + cmdsize > len(raw):
            raise UsageError(f"{label}: damaged Mach-O: load command {i} has bad size {cmdsize}")
        cmds.append(bytearray(raw[pos : pos + cmdsize]))
        pos += cmdsize

    segments: list[_Segment] = []
    first_data = slice_size  # the lowest file offset of segment contents after the header
    signature: tuple[int, int] | None = None
    for c in cmds:
        cmd = _cmd(c)
        if cmd == _LC_SEGMENT_64:
            _, _, name, vmaddr, vmsize, fileoff, filesize, _, _, nsects, _ = SEGMENT.unpack_from(c)
            segments.append(_Segment(name.rstrip(b"\0"), vmaddr, vmsize, fileoff, filesize))
            if filesize and fileoff:
                first_data = min(first_data, fileoff)
            for k in range(nsects):
                offset = SECTION.unpack_from(c, SEGMENT.size + k * SECTION.size)[4]
                if offset:
                    first_data = min(first_data, offset)
        elif cmd == _LC_DYLD_CHAINED_FIXUPS:
            raise UsageError(
                f"{label}: uses chained fixups (LC_DYLD_CHAINED_FIXUPS), which smolpack cannot "
                "move yet; use a stub linked with -no_fixup_chains (PyInstaller's bootloaders are)"
            )
        elif cmd == _LC_CODE_SIGNATURE:
            signature = struct.unpack_from("<II", c, 8)
        elif cmd not in _OFFSETS32 and cmd != _NOTE and cmd not in _NO_OFFSETS:
            raise UsageError(
                f"{label}: Mach-O load command 0x{cmd:x} is unknown to smolpack "
                "(it may hold file offsets that embedding would have to move)"
            )
    names = [s.name for s in segments]
    if MACHO_SEGMENT.encode() in names:
        raise UsageError(
            f"{label}: already carries a payload (segment {MACHO_SEGMENT}); embed into a fresh stub"
        )
    if names.count(b"__LINKEDIT") != 1 or names[-1] != b"__LINKEDIT":
        raise UsageError(
            f"{label}: Mach-O without __LINKEDIT as its last segment; not a stub we know"
        )
    linkedit = segments[-1]
    start, end = linkedit.fileoff, linkedit.fileoff + linkedit.filesize
    if start % RAW_ALIGN or linkedit.vmaddr % RAW_ALIGN:
        raise UsageError(f"{label}: __LINKEDIT at offset {start} is not 16 KiB-aligned")
    for s in segments[:-1]:
        if s.filesize and s.fileoff + s.filesize > start or s.vmaddr + s.vmsize > linkedit.vmaddr:
            raise UsageError(f"{label}: segment {s.name.decode()} lies after __LINKEDIT")
    if end > slice_size:
        raise UsageError(f"{label}: damaged Mach-O: __LINKEDIT ends past the end of the file")
    junk = first_nonzero(fd, slice_offset + end, slice_offset + slice_size)
    if junk is not None:
        raise UsageError(
            f"{label}: data at offset {junk - slice_offset} after __LINKEDIT (an archive appended "
            "without fixing the headers?); not a stub we know"
        )

    if signature is not None:
        # When nothing else in __LINKEDIT follows the signature, drop its bytes
        # and codesign's alignment padding before it: __LINKEDIT then ends
        # where its last data (PyInstaller's archive) ends, as before signing.
        cmds = [c for c in cmds if _cmd(c) != _LC_CODE_SIGNATURE]
        data_end = _linkedit_data_end(cmds)
        if start <= signature[0] <= end and data_end <= signature[0]:
            end = max(start, data_end)
    seg_size = align_up(payload_size, RAW_ALIGN)
    for c in cmds:
        _shift_offsets(c, start, seg_size)
    i_link = next(i for i, c in enumerate(cmds) if _segname(c) == b"__LINKEDIT")
    filesize = end - start
    struct.pack_into(
        "<QQQQ", cmds[i_link], 24,
        linkedit.vmaddr + seg_size, align_up(filesize, RAW_ALIGN), start + seg_size, filesize,
    )  # fmt: skip
    ours = SEGMENT.pack(
        _LC_SEGMENT_64, SEGMENT.size, MACHO_SEGMENT.encode(), linkedit.vmaddr, seg_size,
        start, seg_size, _VM_PROT_READ, _VM_PROT_READ, 0, 0,
    )  # fmt: skip
    cmds.insert(i_link, bytearray(ours))
    body = b"".join(cmds)
    if HEADER.size + len(body) > first_data:
        raise UsageError(
            f"{label}: no room for one more load command ({len(body)} bytes of commands, "
            f"contents start at {first_data}); relink the stub with -headerpad"
        )
    fields[4], fields[5] = len(cmds), len(body)  # ncmds, sizeofcmds
    # Zero what the old, longer command list occupied (a removed signature).
    header = HEADER.pack(*fields) + body + bytes(max(0, sizeofcmds - len(body)))
    moves = (Move(slice_offset, start, 0), Move(slice_offset + start, filesize, start + seg_size))
    return MachoPlan(
        slice_offset=slice_offset,
        header=header,
        payload_offset=start,
        moves=moves,
        size=start + seg_size + filesize,
    )


def _cmd(c: bytearray) -> int:
    return int(struct.unpack_from("<I", c)[0])


def _segname(c: bytearray) -> bytes:
    return bytes(c[8:24]).rstrip(b"\0") if _cmd(c) == _LC_SEGMENT_64 else b""


def _shift_offsets(c: bytearray, start: int, delta: int) -> None:
    """Move every file offset in command `c` that points at or past `start`."""
    cmd = _cmd(c)
    if cmd == _NOTE:
        (offset,) = struct.unpack_from("<Q", c, 24)
        if offset >= start:
            struct.pack_into("<Q", c, 24, offset + delta)
        return
    if cmd == _LC_SEGMENT_64:
        # Section relocations live in __LINKEDIT (object files; executables have none).
        nsects = struct.unpack_from("<I", c, 64)[0]
        positions = tuple(SEGMENT.size + s * SECTION.size + 56 for s in range(nsects))
    else:
        positions = _OFFSETS32.get(cmd, ())
    for at in positions:
        (offset,) = struct.unpack_from("<I", c, at)
        if offset and offset >= start:
            if offset + delta >= 1 << 32:
                raise UsageError("the payload is too large for this Mach-O's 32-bit offsets")
            struct.pack_into("<I", c, at, offset + delta)


# (offset field, count field, entry size) of the data each command points at.
_RANGES: dict[int, tuple[tuple[int, int, int], ...]] = {
    0x02: ((8, 12, 16), (16, 20, 1)),
    0x0B: ((32, 36, 8), (40, 44, 56), (48, 52, 4), (56, 60, 4), (64, 68, 8), (72, 76, 8)),
    0x22: ((8, 12, 1), (16, 20, 1), (24, 28, 1), (32, 36, 1), (40, 44, 1)),
    0x80000022: ((8, 12, 1), (16, 20, 1), (24, 28, 1), (32, 36, 1), (40, 44, 1)),
}


def _linkedit_data_end(cmds: list[bytearray]) -> int:
    """End of the furthest data any (remaining) load command points at."""
    end = 0
    for c in cmds:
        cmd = _cmd(c)
        ranges = _RANGES.get(cmd)
        if ranges is None and _OFFSETS32.get(cmd) == (8,):
            ranges = ((8, 12, 1),)  # linkedit_data_command: dataoff, datasize
        for off_at, count_at, unit in ranges or ():
            offset, count = (
                struct.unpack_from("<I", c, off_at)[0],
                struct.unpack_from("<I", c, count_at)[0],
            )
            if count:
                end = max(end, offset + count * unit)
    return end


def embed_macho(
    stub: str | os.PathLike[str],
    payload: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: str | None = None,
    progress: ProgressFn | None = None,
) -> EmbedResult:
    """Write `out`: the arm64 Mach-O `stub` with `payload` as segment `__SMOLMACH`.

    A universal `stub` gives its arm64 slice; the result is thin and
    unsigned (`needs_signing`). `target`, when given, must be "macos-arm64".
    `progress(done, total)` is called as bytes are copied. Raises
    UsageError/HostError or the payload's own errors; `out` is written
    atomically (mode 0755) or not at all.
    """
    stub_s, payload_s, out_s = os.fspath(stub), os.fspath(payload), os.fspath(out)
    check_target(target)
    src = check_payload(payload_s)
    fd = open_regular(stub_s, "stub")
    try:
        slice_offset, slice_size = find_slice(fd, stub_s)
        plan = plan_macho(fd, stub_s, slice_offset, slice_size, src.size)
        require_target(stub_s, "macos-arm64", target)
        check_distinct(stub_s, payload_s, out_s)
        write_executable(
            out_s,
            stub_fd=fd,
            stub_label=stub_s,
            payload_path=src.path,
            payload_size=src.size,
            payload_offset=plan.payload_offset,
            moves=plan.moves,
            patches=((0, plan.header),),
            size=plan.size,
            progress=progress,
        )
    finally:
        os.close(fd)
    return EmbedResult(
        out=Path(out_s),
        target="macos-arm64",
        container="macho",
        payload_offset=plan.payload_offset,
        payload_size=src.size,
        size=plan.size,
        needs_signing=True,
    )
