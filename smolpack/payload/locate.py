"""Find the payload origin in a standalone file or a packed executable.

Stage: run (the launcher's first step) and inspect. Implements
formats/smolmachine.md, "Embedding in executables": a standalone payload
starts at offset 0; an ELF carries it in a section named `.smolmachine`; a
Mach-O in a segment named `__SMOLMACH`. Every read is bounded and every value
read is range-checked before use: no scanning, cost independent of file size.
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from smolpack.errors import BadLayout, NotASmolmachine, PayloadTruncated
from smolpack.payload._sparse import ShortRead, pread_exact
from smolpack.payload.layout import MAGIC, RAW_ALIGN

ELF_SECTION = ".smolmachine"
MACHO_SEGMENT = "__SMOLMACH"

_ELF_MAGIC = b"\x7fELF"
_MACHO_MAGIC_64 = 0xFEEDFACF
# Bounds on the executable's own tables, far above what any linker emits, so a
# hostile header cannot make us read or allocate much.
_MAX_TABLE_BYTES = 16 * 1024 * 1024
_SHT_NOBITS = 8
_LC_SEGMENT_64 = 0x19

_ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
_ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")  # 64 bytes
_MACHO64_HDR = struct.Struct("<IiiIIII")  # + 4 reserved = 32 bytes
_SEGMENT64 = struct.Struct("<II16sQQQQiiII")  # 72 bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where a payload lives inside its file."""

    # file offset of the first header byte; all format offsets add to this
    origin: int
    # file offset the payload must end by (section/segment end, or file size)
    limit: int
    # "standalone", "elf" or "macho"
    container: str


def find_origin(path: str | os.PathLike[str]) -> int:
    """File offset of the payload origin in `path` (see `locate`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return locate(fd, str(path)).origin
    finally:
        os.close(fd)


def locate(fd: int, label: str) -> Location:
    """Locate the payload in the open file `fd`; `label` names it in errors."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 64, 0)
    if head.startswith(MAGIC):
        return Location(origin=0, limit=size, container="standalone")
    if head.startswith(_ELF_MAGIC):
        return _locate_elf(fd, label, size, head)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == _MACHO_MAGIC_64:
        return _locate_macho(fd, label, size)
    if head and len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise PayloadTruncated(f"{label}: truncated: {len(head)} bytes, the header needs 128")
    raise NotASmolmachine(f"{label}: not a .smolmachine payload or packed executable")


def _read(fd: int, label: str, length: int, offset: int, what: str) -> bytes:
    # Checked against the size first: offsets come from the file and may be
    # up to 2**64-1, which os.pread cannot even take.
    size = os.fstat(fd).st_size
    if offset + length > size:
        raise PayloadTruncated(
            f"{label}: truncated: {what} ends at offset {offset + length}, "
            f"the file has {size} bytes"
        )
    try:
        return pread_exact(fd, length, offset)
    except ShortRead:
        raise PayloadTruncated(f"{label}: truncated while reading {what}") from None


def _checked_origin(
    label: str, origin: int, end: int, size: int, where: str, container: str
) -> Location:
    if end > size:
        raise PayloadTruncated(
            f"{label}: truncated: {where} ends at offset {end}, the file has {size} bytes"
        )
    if origin % RAW_ALIGN:
        raise BadLayout(
            f"{label}: {where} starts at offset {origin}, which is not {RAW_ALIGN}-aligned"
        )
    return Location(origin=origin, limit=end, container=container)


def _locate_elf(fd: int, label: str, size: int, head: bytes) -> Location:
    if len(head) < _ELF64_EHDR.size:
        raise PayloadTruncated(f"{label}: truncated: ELF header needs 64 bytes")
    ident = head[:16]
    if ident[4] != 2 or ident[5] != 1:  # EI_CLASS ELFCLASS64, EI_DATA ELFDATA2LSB
        raise NotASmolmachine(f"{label}: ELF file is not 64-bit little-endian, no payload")
    (_, _, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = _ELF64_EHDR.unpack_from(
        head
    )
    if shoff == 0:
        raise NotASmolmachine(f"{label}: ELF file has no section headers, no {ELF_SECTION}")
    if shentsize < _ELF64_SHDR.size:
        raise BadLayout(f"{label}: ELF e_shentsize is {shentsize}, expected >= 64")
    if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering lives in section 0
        first = _ELF64_SHDR.unpack_from(_read(fd, label, 64, shoff, "ELF section 0"))
        shnum = shnum or first[5]  # sh_size
        shstrndx = first[6] if shstrndx == 0xFFFF else shstrndx  # sh_link
    if shnum * shentsize > _MAX_TABLE_BYTES:
        raise BadLayout(f"{label}: ELF section table of {shnum} entries is too large")
    if shstrndx >= shnum:
        raise BadLayout(f"{label}: ELF e_shstrndx {shstrndx} is not below e_shnum {shnum}")
    table = _read(fd, label, shnum * shentsize, shoff, "ELF section table")
    headers = [_ELF64_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
    str_hdr = headers[shstrndx]
    str_off, str_size = str_hdr[4], str_hdr[5]
    if str_size > _MAX_TABLE_BYTES:
        raise BadLayout(f"{label}: ELF section name table of {str_size} bytes is too large")
    names = _read(fd, label, str_size, str_off, "ELF section name table")
    want = ELF_SECTION.encode()
    for sh_name, sh_type, _, _, sh_offset, sh_size, *_rest in headers:
        if sh_name >= len(names) or names[sh_name : sh_name + len(want) + 1] != want + b"\0":
            continue
        if sh_type == _SHT_NOBITS:
            raise BadLayout(f"{label}: ELF section {ELF_SECTION} has no file contents (NOBITS)")
        where = f"ELF section {ELF_SECTION}"
        return _checked_origin(label, sh_offset, sh_offset + sh_size, size, where, "elf")
    raise NotASmolmachine(f"{label}: ELF file has no {ELF_SECTION} section")


def _locate_macho(fd: int, label: str, size: int) -> Location:
    hdr = _read(fd, label, 32, 0, "Mach-O header")
    _, _, _, _, ncmds, sizeofcmds, _ = _MACHO64_HDR.unpack_from(hdr)
    if sizeofcmds > _MAX_TABLE_BYTES:
        raise BadLayout(f"{label}: Mach-O load commands of {sizeofcmds} bytes are too large")
    cmds = _read(fd, label, sizeofcmds, 32, "Mach-O load commands")
    pos = 0
    for i in range(ncmds):
        if pos + 8 > len(cmds):
            raise BadLayout(f"{label}: Mach-O load command {i} lies outside sizeofcmds")
        cmd, cmdsize = struct.unpack_from("<II", cmds, pos)
        if cmdsize < 8 or pos + cmdsize > len(cmds):
            raise BadLayout(f"{label}: Mach-O load command {i} has bad cmdsize {cmdsize}")
        if cmd == _LC_SEGMENT_64 and cmdsize >= _SEGMENT64.size:
            segname = _SEGMENT64.unpack_from(cmds, pos)[2].rstrip(b"\0")
            if segname == MACHO_SEGMENT.encode():
                fileoff, filesize = _SEGMENT64.unpack_from(cmds, pos)[5:7]
                where = f"Mach-O segment {MACHO_SEGMENT}"
                return _checked_origin(label, fileoff, fileoff + filesize, size, where, "macho")
        pos += cmdsize
    raise NotASmolmachine(f"{label}: Mach-O file has no {MACHO_SEGMENT} segment")
