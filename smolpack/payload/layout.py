"""Byte layout of the `.smolmachine` container: constants, header, index, entries.

Stage: payload (shared by the create side's writer and the run side's reader).
Implements formats/smolmachine.md, sections "Header", "Index header" and
"Section entry": one dataclass per table, same field names, same order.
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

MAGIC = b"SMOLMACH"
VERSION_MAJOR = 1
VERSION_MINOR = 0

HEADER_SIZE = 128
# Larger headers (newer minors) are accepted up to this many bytes; only the
# first HEADER_SIZE are read.
HEADER_SIZE_MAX = 64 * 1024
INDEX_HEADER_SIZE = 16
ENTRY_SIZE = 128
# 16 MiB holds ~131 000 entries; the cap bounds the one allocation made from
# an untrusted length before the index digest is checked.
INDEX_SIZE_MAX = 16 * 1024 * 1024
NAME_SIZE = 32

# 16 KiB is the largest page size of our hosts (macOS arm64), so a raw section
# at a 2**14-aligned origin-relative offset can be mmapped in place everywhere.
RAW_ALIGN_LOG2 = 14
RAW_ALIGN = 1 << RAW_ALIGN_LOG2
# Compressed sections are only ever streamed; 8-byte alignment keeps them dense.
ZSTD_ALIGN_LOG2 = 3
ALIGN_LOG2_MAX = 30
INDEX_ALIGN = 8

# The manifest is read into memory whole, so its size is bounded.
MANIFEST_SIZE_MAX = 16 * 1024 * 1024

# <: little-endian, no implicit padding.
_HEADER = struct.Struct("<8sHHIIIQQQ32s")  # 80 bytes, reserved zeros to 128
_INDEX_HEADER = struct.Struct("<II")  # 8 bytes, reserved zeros to 16
_ENTRY = struct.Struct("<32sIIIIQQQ32s")  # 104 bytes, reserved zeros to 128

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")


class SectionKind(enum.IntEnum):
    """`kind` of a section entry; readers skip kinds they do not know."""

    MANIFEST = 1
    KERNEL = 2
    DISK = 3
    STATE = 4
    AGENT = 5
    LIBRARY = 6


class Codec(enum.IntEnum):
    """`codec` of a section entry: how the stored bytes encode the raw bytes."""

    NONE = 0
    ZSTD = 1


def kind_name(kind: int) -> str:
    """`disk` for a known kind, `unknown(9)` otherwise (for inspect and errors)."""
    try:
        return SectionKind(kind).name.lower()
    except ValueError:
        return f"unknown({kind})"


def codec_name(codec: int) -> str:
    try:
        return Codec(codec).name.lower()
    except ValueError:
        return f"unknown({codec})"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid section name, or None if it is.

    Names are 1-32 bytes of [a-z0-9._/-], every `/`-separated component
    starting with a letter or digit (so no empty, `.` or `..` components):
    consumers may use them in paths.
    """
    if not name:
        return "is empty"
    if len(name.encode("utf-8")) > NAME_SIZE:
        return f"is longer than {NAME_SIZE} bytes"
    if not _NAME_RE.fullmatch(name):
        return "must be [a-z0-9._/-] with each '/' component starting with [a-z0-9]"
    return None


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The fixed header at the origin (formats/smolmachine.md, "Header")."""

    # format major version; readers refuse any other than VERSION_MAJOR
    version_major: int = VERSION_MAJOR
    # format minor version; newer minors stay readable
    version_minor: int = VERSION_MINOR
    # bytes of header at the origin; >= 128, sections start at or after it
    header_size: int = HEADER_SIZE
    # must-understand feature bits; none defined, readers reject any set
    flags: int = 0
    # bytes from the origin to the end of the index (the whole payload)
    payload_size: int
    # origin-relative offset of the index
    index_offset: int
    # bytes of index (index header + entries)
    index_size: int
    # SHA-256 of the index bytes, in digest byte order
    index_sha256: bytes

    def pack(self) -> bytes:
        raw = _HEADER.pack(
            MAGIC,
            self.version_major,
            self.version_minor,
            self.header_size,
            self.flags,
            0,
            self.payload_size,
            self.index_offset,
            self.index_size,
            self.index_sha256,
        )
        return raw.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> tuple[bytes, Header]:
        """(magic, header) from the first HEADER_SIZE bytes; checks nothing."""
        (magic, major, minor, header_size, flags, _pad, payload_size, index_offset, index_size,
         digest) = _HEADER.unpack_from(data)  # fmt: skip
        header = cls(
            version_major=major,
            version_minor=minor,
            header_size=header_size,
            flags=flags,
            payload_size=payload_size,
            index_offset=index_offset,
            index_size=index_size,
            index_sha256=digest,
        )
        return magic, header


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexHeader:
    """The 16 bytes that start the index (formats/smolmachine.md, "Index header")."""

    # number of section entries that follow
    entry_count: int
    # bytes per entry; >= 128, newer minors may append fields
    entry_size: int = ENTRY_SIZE

    def pack(self) -> bytes:
        return _INDEX_HEADER.pack(self.entry_count, self.entry_size).ljust(INDEX_HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> IndexHeader:
        count, size = _INDEX_HEADER.unpack_from(data)
        return cls(entry_count=count, entry_size=size)


@dataclass(frozen=True, slots=True, kw_only=True)
class SectionEntry:
    """One index entry (formats/smolmachine.md, "Section entry")."""

    # unique section name, [a-z0-9._/-], 1-32 bytes
    name: str
    # SectionKind value; unknown kinds are kept but ignored by consumers
    kind: int
    # Codec value; an unknown codec fails only reads of this section
    codec: int
    # must-understand bits for this section; none defined, reads fail if set
    flags: int = 0
    # log2 of the alignment of `offset` (14 for codec none)
    align_log2: int
    # origin-relative offset of the stored bytes
    offset: int
    # bytes stored in the payload
    stored_size: int
    # bytes after decoding (== stored_size for codec none)
    raw_size: int
    # SHA-256 of the stored bytes, in digest byte order
    sha256: bytes

    @property
    def kind_name(self) -> str:
        return kind_name(self.kind)

    @property
    def codec_name(self) -> str:
        return codec_name(self.codec)

    def pack(self) -> bytes:
        return _ENTRY.pack(
            self.name.encode("utf-8"),
            self.kind,
            self.codec,
            self.flags,
            self.align_log2,
            self.offset,
            self.stored_size,
            self.raw_size,
            self.sha256,
        ).ljust(ENTRY_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> tuple[bytes, SectionEntry]:
        """(raw name field, entry) from ENTRY_SIZE bytes.

        The name is decoded leniently here (invalid bytes become U+FFFD) so
        the caller can validate the raw field and name it in its error.
        """
        (name_raw, kind, codec, flags, align_log2, offset, stored_size, raw_size,
         digest) = _ENTRY.unpack_from(data)  # fmt: skip
        entry = cls(
            name=name_raw.rstrip(b"\0").decode("utf-8", "replace"),
            kind=kind,
            codec=codec,
            flags=flags,
            align_log2=align_log2,
            offset=offset,
            stored_size=stored_size,
            raw_size=raw_size,
            sha256=digest,
        )
        return name_raw, entry
