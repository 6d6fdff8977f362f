"""Open, validate and read a `.smolmachine` payload (standalone or embedded).

Stage: run (the launcher opens its own payload) and inspect/verify. Implements
formats/smolmachine.md, "Reader obligations": the checks below run in the
numbered order of that list, every length and offset from the file is checked
before it is used to read or allocate, and opening costs a few bounded reads
plus one SHA-256 of the index, whatever the payload size. Stdlib only at top
level: `zstandard` is imported when a zstd section is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator

from smolpack.atomic_file import AtomicFile
from smolpack.errors import (
    BadLayout,
    IndexDigestMismatch,
    NotASmolmachine,
    PayloadTruncated,
    SectionDigestMismatch,
    UnsupportedVersion,
)
from smolpack.payload import _decode
from smolpack.payload._sparse import ShortRead, copy_range, pread_exact
from smolpack.payload.layout import (
    ALIGN_LOG2_MAX,
    ENTRY_SIZE,
    HEADER_SIZE,
    HEADER_SIZE_MAX,
    INDEX_HEADER_SIZE,
    INDEX_SIZE_MAX,
    MAGIC,
    MANIFEST_SIZE_MAX,
    NAME_SIZE,
    RAW_ALIGN_LOG2,
    VERSION_MAJOR,
    Codec,
    Header,
    IndexHeader,
    SectionEntry,
    SectionKind,
    name_problem,
)
from smolpack.payload.locate import Location, locate
from smolpack.payload.manifest import Manifest

# Sections read into memory (read_section) above this size must be streamed
# with copy_section_to instead: 256 MiB of RAM is the most we take on a whim.
READ_SECTION_MAX = 256 * 1024 * 1024


def short(digest: bytes) -> str:
    """First 12 hex digits of a digest, as shown in messages."""
    return digest.hex()[:12] + "…"


@contextlib.contextmanager
def _no_short_reads(label: str) -> Iterator[None]:
    # Sizes were checked on open; a short read now means the file shrank since.
    try:
        yield
    except ShortRead as err:
        raise PayloadTruncated(
            f"{label}: truncated: the file ends at offset {err.offset} (did it shrink?)"
        ) from None


def open_payload(path: str | os.PathLike[str]) -> Payload:
    """Open `path`, locate its payload and validate header and index.

    Raises a PayloadError subclass for anything malformed; nothing from the
    file is trusted before it is checked. Close the result (or use `with`).
    """
    label = str(path)
    # Checked before open: opening a FIFO would block, a directory is no file.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotASmolmachine(f"{label}: is not a regular file, so not a .smolmachine payload")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _no_short_reads(label):
            loc = locate(fd, label)
            header, sections = _validate(fd, label, loc)
    except BaseException:
        os.close(fd)
        raise
    return Payload(path=label, fd=fd, location=loc, header=header, sections=sections)


def _validate(fd: int, label: str, loc: Location) -> tuple[Header, dict[str, SectionEntry]]:
    origin, room = loc.origin, loc.limit - loc.origin
    # 1. The file holds a whole fixed header at the origin.
    if room < HEADER_SIZE:
        raise PayloadTruncated(
            f"{label}: truncated: {room} bytes after the origin, the header needs {HEADER_SIZE}"
        )
    magic, header = Header.unpack(pread_exact(fd, HEADER_SIZE, origin))
    # 2. Magic.
    if magic != MAGIC:
        raise NotASmolmachine(
            f"{label}: bad magic at offset {origin} (expected {MAGIC.hex()}, found {magic.hex()})"
        )
    # 3. Major version.
    if header.version_major != VERSION_MAJOR:
        raise UnsupportedVersion(
            f"{label}: format version {header.version_major}.{header.version_minor} is not "
            f"supported (this smolpack reads {VERSION_MAJOR}.x)"
        )
    # 4. Header flags: must-understand bits, none defined in 1.x.
    if header.flags:
        raise UnsupportedVersion(
            f"{label}: header flags 0x{header.flags:08x} set; this smolpack knows none "
            "(written by a newer smolpack?)"
        )
    # 5. header_size.
    if not HEADER_SIZE <= header.header_size <= HEADER_SIZE_MAX or header.header_size % 8:
        raise BadLayout(
            f"{label}: header field header_size is {header.header_size} "
            f"(expected a multiple of 8 in {HEADER_SIZE}..{HEADER_SIZE_MAX})"
        )
    # 6. The whole payload is in the file (and in its container section).
    if header.payload_size > room:
        if origin + header.payload_size > os.fstat(fd).st_size or loc.container == "standalone":
            raise PayloadTruncated(
                f"{label}: truncated: header says the payload is {header.payload_size} bytes, "
                f"the file has {room} after the origin"
            )
        raise BadLayout(
            f"{label}: header field payload_size {header.payload_size} exceeds the "
            f"{loc.container} container of {room} bytes"
        )
    # 7. The index lies inside the payload, after the header, and is bounded.
    index_end = header.index_offset + header.index_size
    if not (
        INDEX_HEADER_SIZE <= header.index_size <= INDEX_SIZE_MAX
        and header.header_size <= header.index_offset
        and index_end <= header.payload_size
    ):
        raise BadLayout(
            f"{label}: index range [{header.index_offset}, {index_end}) is not inside "
            f"[{header.header_size}, {header.payload_size}) or its size is not in "
            f"{INDEX_HEADER_SIZE}..{INDEX_SIZE_MAX}"
        )
    # 8. Index digest, before anything in the index is used.
    index = pread_exact(fd, header.index_size, origin + header.index_offset)
    found = hashlib.sha256(index).digest()
    if found != header.index_sha256:
        raise IndexDigestMismatch(
            f"{label}: index digest mismatch (expected {short(header.index_sha256)}, "
            f"found {short(found)})"
        )
    # 9. Index header.
    ih = IndexHeader.unpack(index)
    if ih.entry_size < ENTRY_SIZE or ih.entry_size % 8:
        raise BadLayout(
            f"{label}: index field entry_size is {ih.entry_size} "
            f"(expected a multiple of 8, at least {ENTRY_SIZE})"
        )
    if INDEX_HEADER_SIZE + ih.entry_count * ih.entry_size > header.index_size:
        raise BadLayout(
            f"{label}: index field entry_count {ih.entry_count} needs "
            f"{INDEX_HEADER_SIZE + ih.entry_count * ih.entry_size} bytes, index_size is "
            f"{header.index_size}"
        )
    # 10. Each entry.
    sections: dict[str, SectionEntry] = {}
    for i in range(ih.entry_count):
        start = INDEX_HEADER_SIZE + i * ih.entry_size
        entry = _check_entry(label, i, *SectionEntry.unpack(index[start : start + ENTRY_SIZE]))
        if entry.name in sections:
            raise BadLayout(f"{label}: section {i} repeats the name '{entry.name}'")
        end = entry.offset + entry.stored_size
        if entry.offset < header.header_size or end > header.index_offset:
            raise BadLayout(
                f"{label}: section '{entry.name}' range [{entry.offset}, {end}) is not inside "
                f"[{header.header_size}, {header.index_offset})"
            )
        sections[entry.name] = entry
    # 11. No two sections overlap.
    by_offset = sorted(sections.values(), key=lambda e: (e.offset, e.stored_size))
    for prev, cur in zip(by_offset, by_offset[1:], strict=False):
        if prev.offset + prev.stored_size > cur.offset:
            raise BadLayout(
                f"{label}: sections '{prev.name}' [{prev.offset}, "
                f"{prev.offset + prev.stored_size}) and '{cur.name}' [{cur.offset}, "
                f"{cur.offset + cur.stored_size}) overlap"
            )
    # 12. Exactly one manifest, small enough to read into memory.
    manifests = [e for e in sections.values() if e.kind == SectionKind.MANIFEST]
    if len(manifests) != 1:
        raise BadLayout(f"{label}: index has {len(manifests)} manifest sections, expected 1")
    if manifests[0].raw_size > MANIFEST_SIZE_MAX:
        raise BadLayout(
            f"{label}: manifest section is {manifests[0].raw_size} bytes "
            f"(limit {MANIFEST_SIZE_MAX})"
        )
    return header, sections


def _check_entry(label: str, i: int, name_raw: bytes, entry: SectionEntry) -> SectionEntry:
    """Per-entry checks of obligation 10 (name, alignment, sizes)."""
    used = name_raw.rstrip(b"\0")
    if b"\0" in used or len(name_raw) != NAME_SIZE:
        raise BadLayout(f"{label}: section {i} name field is not NUL-padded")
    problem = name_problem(entry.name) if "\ufffd" not in entry.name else "is not UTF-8"
    if problem:
        shown = f"'{entry.name}'" if "\ufffd" not in entry.name else repr(used)
        raise BadLayout(f"{label}: section {i} name {shown} {problem}")
    if entry.align_log2 > ALIGN_LOG2_MAX:
        raise BadLayout(
            f"{label}: section '{entry.name}' align_log2 is {entry.align_log2} "
            f"(expected at most {ALIGN_LOG2_MAX})"
        )
    if entry.offset % (1 << entry.align_log2):
        raise BadLayout(
            f"{label}: section '{entry.name}' offset {entry.offset} is not aligned to "
            f"2**{entry.align_log2}"
        )
    if entry.codec == Codec.NONE:
        if entry.align_log2 < RAW_ALIGN_LOG2:
            raise BadLayout(
                f"{label}: section '{entry.name}' has codec none but align_log2 "
                f"{entry.align_log2} (expected at least {RAW_ALIGN_LOG2})"
            )
        if entry.stored_size != entry.raw_size:
            raise BadLayout(
                f"{label}: section '{entry.name}' has codec none but stored_size "
                f"{entry.stored_size} != raw_size {entry.raw_size}"
            )
    return entry


class Payload:
    """An opened, validated payload. Reads use pread on one descriptor."""

    def __init__(
        self,
        *,
        path: str,
        fd: int,
        location: Location,
        header: Header,
        sections: dict[str, SectionEntry],
    ) -> None:
        self.path = path
        self.location = location
        self.origin = location.origin
        self.header = header
        # name -> entry, in index order; includes kinds this reader does not know
        self.sections = sections
        self._fd = fd
        self._manifest: Manifest | None = None

    def __enter__(self) -> Payload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _entry(self, name: str) -> SectionEntry:
        try:
            return self.sections[name]
        except KeyError:
            raise BadLayout(f"{self.path}: no section named '{name}'") from None

    def _mismatch(self, entry: SectionEntry, found: bytes) -> SectionDigestMismatch:
        return SectionDigestMismatch(
            f"{self.path}: section '{entry.name}' digest mismatch "
            f"(expected {short(entry.sha256)}, found {short(found)})"
        )

    def section_file_range(self, name: str) -> tuple[int, int]:
        """(file offset, size) of a codec-none section, for mmap(MAP_PRIVATE).

        The offset is 16 KiB-aligned in the file. The bytes are NOT digest-
        checked here (that is what `verify` or the caller's cache is for).
        """
        entry = self._entry(name)
        if entry.codec != Codec.NONE:
            raise BadLayout(
                f"{self.path}: section '{name}' is {entry.codec_name}-compressed, "
                "it cannot be mapped in place"
            )
        return self.origin + entry.offset, entry.stored_size

    def pread_section(self, name: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a codec-none section, clipped to its end.

        NOT digest-checked: for callers that hash the whole section as they go (krun memory).
        """
        at, size = self.section_file_range(name)
        length = max(0, min(length, size - offset))
        with _no_short_reads(self.path):
            return pread_exact(self._fd, length, at + offset)

    def read_section(self, name: str, *, max_size: int = READ_SECTION_MAX) -> bytes:
        """The raw (decoded) bytes of a small section, digest-checked."""
        entry = self._entry(name)
        _decode.check_readable(self.path, entry)
        if entry.raw_size > max_size or entry.stored_size > max_size:
            raise BadLayout(
                f"{self.path}: section '{name}' is {entry.raw_size} bytes, more than "
                f"{max_size} to read into memory"
            )
        if entry.codec == Codec.NONE:
            with _no_short_reads(self.path):
                data = pread_exact(self._fd, entry.stored_size, self.origin + entry.offset)
            found = hashlib.sha256(data).digest()
            if found != entry.sha256:
                raise self._mismatch(entry, found)
            return data
        sink = _decode.MemorySink()
        _decode.decode_section(self._fd, self.origin, self.path, entry, sink)
        return sink.getvalue()

    def manifest(self) -> Manifest:
        """The parsed manifest; its digest is checked and so are its state sections.

        Read and checked once per open payload (a run asks for it at several steps: plan,
        host facts, engine start); later calls return the same immutable `Manifest`.
        """
        if self._manifest is not None:
            return self._manifest
        (entry,) = [e for e in self.sections.values() if e.kind == SectionKind.MANIFEST]
        manifest = Manifest.from_json(self.read_section(entry.name), label=self.path)
        for state in manifest.states:
            for section in state.sections:
                if section not in self.sections:
                    raise BadLayout(
                        f"{self.path}: manifest state '{state.name}' names section "
                        f"'{section}', which the index does not have"
                    )
        self._manifest = manifest
        return manifest

    def copy_section_to(self, name: str, dst_path: str | os.PathLike[str]) -> None:
        """Stream a section's raw bytes to `dst_path`, digest-checked, sparse-preserving.

        Writes a temporary file beside dst_path and renames it on success; on
        any failure (SectionDigestMismatch included) nothing is left behind.
        """
        entry = self._entry(name)
        _decode.check_readable(self.path, entry)
        with AtomicFile(dst_path) as out:
            if entry.codec == Codec.NONE:
                hasher = hashlib.sha256()
                with _no_short_reads(self.path):
                    copy_range(
                        self._fd, self.origin + entry.offset, entry.stored_size, out.fd, 0, hasher
                    )
                if hasher.digest() != entry.sha256:
                    raise self._mismatch(entry, hasher.digest())
            else:
                _decode.decode_section(
                    self._fd, self.origin, self.path, entry, _decode.FileSink(out.fd)
                )
            # Callers that need durability (the cache) fsync and rename once more.
            out.commit(size=entry.raw_size, mode=0o644, durable=False)

    def verify(self) -> int:
        """Hash every section's stored bytes and parse the manifest; return the count.

        Holes are hashed as zeros without being read, so a sparse 4 GiB disk
        costs one SHA-256 pass (~2.5 s here), not 4 GiB of reads.
        """
        for entry in sorted(self.sections.values(), key=lambda e: e.offset):
            hasher = hashlib.sha256()
            with _no_short_reads(self.path):
                copy_range(self._fd, self.origin + entry.offset, entry.stored_size, None, 0, hasher)
            if hasher.digest() != entry.sha256:
                raise self._mismatch(entry, hasher.digest())
        self.manifest()
        return len(self.sections)
