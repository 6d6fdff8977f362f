"""Generate the `.smolmachine` golden vectors (formats/smolmachine.md, "Test vectors").

Run `python formats/vectors/smolmachine/generate.py` from the repository root
to rewrite valid/, invalid/ and README.md. tests/test_payload_vectors.py calls
`build()` and compares byte for byte with the committed files, so a format
change without a vector change fails.

The payload bytes are assembled here with `struct` directly, NOT with
smolpack's writer: this is a second implementation of the spec's tables, and
a test checks that PayloadWriter produces the very same bytes for
valid/sample.smolmachine. smolpack is imported only to record what the reader
says about each vector (expected inspect JSON and error messages).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zstandard

HERE = Path(__file__).resolve().parent
MAGIC = b"SMOLMACH"
CREATED = "2026-11-22T00:00:00Z"
KIND = {"manifest": 1, "kernel": 2, "disk": 3, "state": 4, "agent": 5}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sec:
    """One section as the assembler lays it out (defaults follow the 1.0 writer)."""

    name: bytes
    kind: int
    stored: bytes
    codec: int = 0
    raw_size: int | None = None  # None: len(stored) for codec 0, given for zstd
    align_log2: int | None = None  # None: 14 for codec none, 3 otherwise
    flags: int = 0
    offset: int | None = None  # None: next aligned offset
    sha256: bytes | None = None  # None: digest of `stored`


def raw(name: str, kind: str, data: bytes) -> Sec:
    return Sec(name=name.encode(), kind=KIND[kind], stored=data)


def zstd(name: str, kind: str, data: bytes) -> Sec:
    stored = zstandard.ZstdCompressor(level=3).compress(data)
    return Sec(name=name.encode(), kind=KIND[kind], stored=stored, codec=1, raw_size=len(data))


def assemble(
    sections: list[Sec],
    *,
    header: dict[str, Any] | None = None,
    header_size: int = 128,
    header_tail: bytes = b"",
    entry_size: int = 128,
    entry_tail: bytes = b"",
    index_tail: bytes = b"",
    entry_count: int | None = None,
    reserved: bytes = b"",
) -> bytes:
    """Lay out header, sections and index exactly as formats/smolmachine.md says.

    `reserved` (if given) is written into every reserved byte range instead of
    zeros, as a newer minor might: readers must ignore it.
    """

    def fill(n: int) -> bytes:
        return (reserved * n)[:n] if reserved else bytes(n)

    body = bytearray(header_size)
    entries = []
    for s in sections:
        align = 1 << (s.align_log2 if s.align_log2 is not None else (14 if s.codec == 0 else 3))
        offset = s.offset if s.offset is not None else -(-len(body) // align) * align
        end = offset + len(s.stored)
        if end > len(body):
            body.extend(bytes(end - len(body)))
        body[offset:end] = s.stored
        align_log2 = s.align_log2 if s.align_log2 is not None else (14 if s.codec == 0 else 3)
        raw_size = s.raw_size if s.raw_size is not None else len(s.stored)
        digest = s.sha256 if s.sha256 is not None else hashlib.sha256(s.stored).digest()
        entry = struct.pack(
            "<32sIIIIQQQ32s24x",
            s.name,
            s.kind,
            s.codec,
            s.flags,
            align_log2,
            offset,
            len(s.stored),
            raw_size,
            digest,
        )
        entry = entry[:104] + fill(24)
        entries.append(entry + entry_tail.ljust(entry_size - 128, b"\0"))
    count = len(sections) if entry_count is None else entry_count
    index = struct.pack("<II", count, entry_size) + fill(8) + b"".join(entries) + index_tail
    index_offset = -(-len(body) // 8) * 8
    body.extend(bytes(index_offset - len(body)))
    fields: dict[str, Any] = {
        "magic": MAGIC,
        "version_major": 1,
        "version_minor": 0,
        "header_size": header_size,
        "flags": 0,
        "payload_size": index_offset + len(index),
        "index_offset": index_offset,
        "index_size": len(index),
        "index_sha256": hashlib.sha256(index).digest(),
    }
    fields.update(header or {})
    head = struct.pack("<8sHHII4xQQQ32s48x", *fields.values())
    head = head[:20] + fill(4) + head[24:80] + fill(48)
    body[:128] = head
    body[128:header_size] = header_tail.ljust(header_size - 128, b"\0")
    return bytes(body) + index


def manifest(states: list[dict[str, Any]], **extra: Any) -> bytes:
    """Manifest JSON exactly as smolpack's Manifest.to_json writes it."""
    obj = {
        "format_version": 1,
        "smolpack_version": "0.1.0",
        "created": CREATED,
        "guest_arch": "x86_64",
        "machine": {"cpus": 1, "memory_mib": 256},
        "states": states,
        **extra,
    }
    return json.dumps(obj, sort_keys=True, indent=1).encode() + b"\n"


QEMU = {
    "name": "qemu-x86_64",
    "engine": "qemu",
    "host_arch": "x86_64",
    "host_os": "linux",
    "sections": ["qemu-x86_64/migration"],
}
KRUN = {
    "name": "krun-x86_64",
    "engine": "krun",
    "host_arch": "x86_64",
    "host_os": "linux",
    "sections": ["krun-x86_64/memory.bin", "krun-x86_64/checkpoint.bin"],
}


def pattern(seed: bytes, size: int) -> bytes:
    """Deterministic incompressible-ish bytes."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(seed + i.to_bytes(4, "little")).digest()
        i += 1
    return bytes(out[:size])


def sample_inputs() -> list[tuple[str, str, int, bytes]]:
    """(name, kind, codec, raw bytes) of valid/sample.smolmachine, in order."""
    disk = bytearray(65536)  # a 64 KiB "disk": data, a zero block (a hole), data
    disk[0:1024] = pattern(b"disk-a", 1024)
    disk[49152:50000] = pattern(b"disk-b", 848)
    return [
        ("manifest", "manifest", 0, manifest([QEMU, KRUN])),
        ("kernel", "kernel", 1, b"\x7fELF kernel stand-in\n" * 512 + pattern(b"k", 2048)),
        ("disk", "disk", 0, bytes(disk)),
        ("qemu-x86_64/migration", "state", 1, b"QEVM\0\0\0\3" + pattern(b"q", 4096)),
        ("krun-x86_64/memory.bin", "state", 0, pattern(b"mem", 16384)),
        ("krun-x86_64/checkpoint.bin", "state", 1, b"checkpoint\n" * 100),
    ]


def sample_sections() -> list[Sec]:
    return [
        (zstd if codec else raw)(name, kind, data) for name, kind, codec, data in sample_inputs()
    ]


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def valid_vectors() -> dict[str, bytes]:
    minimal = assemble([raw("manifest", "manifest", manifest([]))])
    sample = assemble(sample_sections())
    future = assemble(
        [
            raw("manifest", "manifest", manifest([QEMU], future_key={"added": "in 1.3"})),
            Sec(name=b"future/thing", kind=42, stored=b"a kind from the future\n"),
            raw("qemu-x86_64/migration", "state", pattern(b"q", 100)),
        ],
        header={"version_minor": 3},
        header_size=256,
        header_tail=b"fields a 1.3 writer added",
        entry_size=160,
        entry_tail=b"entry fields added in 1.3",
        index_tail=b"index trailer added in 1.3",
        reserved=b"reserved-in-1.0 ",
    )
    # A newer smolpack's engine (and a host this one does not know), listed first: skipped;
    # their sections are absent and not checked; the qemu state is what this reader sees.
    future_engine = assemble(
        [
            raw(
                "manifest",
                "manifest",
                manifest(
                    [
                        {**QEMU, "name": "xen-x86_64", "engine": "xen", "sections": ["nope"]},
                        {**QEMU, "name": "qemu-riscv", "host_arch": "riscv64", "sections": 3},
                        QEMU,
                    ]
                ),
            ),
            raw("qemu-x86_64/migration", "state", pattern(b"q", 100)),
        ]
    )
    return {
        "minimal.smolmachine": minimal,
        "sample.smolmachine": sample,
        "future-minor.smolmachine": future,
        "future-engine.smolmachine": future_engine,
    }


def invalid_vectors() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, operation that must fail: open | verify | manifest | read:<name>)."""
    man = raw("manifest", "manifest", manifest([]))
    minimal = assemble([man])
    sample = sample_sections()
    sample_bytes = assemble(sample)
    by_name = {s.name.decode(): s for s in sample}
    disk = raw("disk", "disk", pattern(b"small-disk", 4096))
    kernel = by_name["kernel"]
    # Where the disk's bytes land in valid/sample (first raw section after the zstd kernel).
    disk_at = 16384 * 2
    assert sample_bytes[disk_at : disk_at + 16] == by_name["disk"].stored[:16]
    # Index starts right after the last section; its first entry is at +16.
    index_at = len(minimal) - 16 - 128

    def with_disk(**change: Any) -> bytes:
        return assemble([man, replace(disk, **change)])

    return {
        "empty.smolmachine": (b"", "open"),
        "not-a-payload.smolmachine": (b"#!/bin/sh\necho hello\n", "open"),
        "truncated-header.smolmachine": (minimal[:100], "open"),
        "truncated-payload.smolmachine": (minimal[:-1], "open"),
        "bad-magic.smolmachine": (assemble([man], header={"magic": b"SMOLMACX"}), "open"),
        "major-2.smolmachine": (assemble([man], header={"version_major": 2}), "open"),
        "header-flags.smolmachine": (assemble([man], header={"flags": 1}), "open"),
        "header-size-64.smolmachine": (assemble([man], header={"header_size": 64}), "open"),
        "index-out-of-range.smolmachine": (
            assemble([man], header={"index_offset": 1 << 40}),
            "open",
        ),
        "index-digest.smolmachine": (flip(minimal, index_at + 40), "open"),
        "entry-count-huge.smolmachine": (assemble([man], entry_count=0xFFFFFFFF), "open"),
        "entry-size-small.smolmachine": (reseal(minimal, [(4, "<I", 120)]), "open"),
        "bad-name.smolmachine": (with_disk(name=b"Disk"), "open"),
        "name-dotdot.smolmachine": (with_disk(name=b"state/../../etc"), "open"),
        "duplicate-name.smolmachine": (with_disk(name=b"manifest"), "open"),
        "misaligned-offset.smolmachine": (with_disk(offset=16384 + 8), "open"),
        "raw-align-small.smolmachine": (with_disk(align_log2=3), "open"),
        "raw-size-mismatch.smolmachine": (with_disk(raw_size=len(disk.stored) + 1), "open"),
        # The disk claims 64 bytes more than it has (stored and raw): into the index.
        "section-into-index.smolmachine": (
            reseal(
                assemble([man, disk]),
                [
                    (16 + 128 + 56, "<Q", len(disk.stored) + 64),
                    (16 + 128 + 64, "<Q", len(disk.stored) + 64),
                ],
            ),
            "open",
        ),
        "overlap.smolmachine": (
            assemble([man, disk, replace(kernel, offset=16384 + 8)]),
            "open",
        ),
        "no-manifest.smolmachine": (assemble([disk]), "open"),
        "section-digest.smolmachine": (flip(sample_bytes, disk_at + 5), "verify"),
        "manifest-digest.smolmachine": (flip(minimal, 16384 + 3), "manifest"),
        "manifest-bad-json.smolmachine": (
            assemble([raw("manifest", "manifest", b'{"format_version": 1,')]),
            "manifest",
        ),
        "manifest-state-no-engine.smolmachine": (
            assemble(
                [
                    raw("manifest", "manifest", manifest([{**QEMU, "engine": 7}])),
                    raw("qemu-x86_64/migration", "state", b"x"),
                ]
            ),
            "manifest",
        ),
        "manifest-missing-section.smolmachine": (
            assemble([raw("manifest", "manifest", manifest([QEMU]))]),
            "manifest",
        ),
        "manifest-version-2.smolmachine": (
            assemble([raw("manifest", "manifest", manifest([], format_version=2))]),
            "manifest",
        ),
        "unknown-codec.smolmachine": (assemble([man, replace(kernel, codec=7)]), "read:kernel"),
        "entry-flags.smolmachine": (assemble([man, replace(kernel, flags=4)]), "read:kernel"),
        "zstd-size-mismatch.smolmachine": (
            assemble([man, replace(kernel, raw_size=(kernel.raw_size or 0) - 1)]),
            "read:kernel",
        ),
        "zstd-corrupt.smolmachine": (
            assemble([man, replace(kernel, stored=b"\x28\xb5\x2f\xfd" + bytes(60))]),
            "read:kernel",
        ),
    }


def reseal(data: bytes, edits: list[tuple[int, str, int]]) -> bytes:
    """Apply (index-relative offset, struct format, value) edits to the index and
    recompute index_sha256, so the damage is past the digest check."""
    index_offset, index_size = struct.unpack_from("<QQ", data, 32)
    out = bytearray(data)
    for at, fmt, value in edits:
        struct.pack_into(fmt, out, index_offset + at, value)
    out[48:80] = hashlib.sha256(out[index_offset : index_offset + index_size]).digest()
    return bytes(out)


VALID_NOTES = {
    "minimal.smolmachine": "a manifest with no states, nothing else (the smallest valid payload)",
    "sample.smolmachine": "manifest, zstd kernel, sparse raw disk, a qemu state (zstd) and a "
    "krun state (raw memory.bin + zstd checkpoint.bin); PayloadWriter must reproduce it exactly",
    "future-minor.smolmachine": "version 1.3 with a 256-byte header, 160-byte entries, an index "
    "trailer, non-zero reserved bytes, an unknown section kind 42 and an unknown manifest key: "
    "a 1.0 reader reads it",
    "future-engine.smolmachine": "states for an engine (`xen`) and a host arch (`riscv64`) this "
    "reader does not know, listed first and naming absent sections: skipped; the qemu state "
    "is the one read",
}


# What each invalid vector must fail with, written from the spec (formats/smolmachine.md,
# "Reader obligations" and "Errors") and reviewed against it: the obligation number is
# given per case. `build()` runs the reader and refuses to write the vectors if it disagrees,
# so a reader change cannot silently rewrite what the spec expects.
EXPECTED: dict[str, tuple[str, str, int, str]] = {
    # obligation 0 (locate: no magic at 0, not ELF/Mach-O)
    "empty.smolmachine": (
        "open",
        "NotASmolmachine",
        111,
        "empty.smolmachine: not a .smolmachine payload or packed executable",
    ),
    # obligation 0 (locate)
    "not-a-payload.smolmachine": (
        "open",
        "NotASmolmachine",
        111,
        "not-a-payload.smolmachine: not a .smolmachine payload or packed executable",
    ),
    # obligation 1
    "truncated-header.smolmachine": (
        "open",
        "PayloadTruncated",
        110,
        "truncated-header.smolmachine: truncated: 100 bytes after the origin, the header needs 128",
    ),
    # obligation 6
    "truncated-payload.smolmachine": (
        "open",
        "PayloadTruncated",
        110,
        "truncated-payload.smolmachine: truncated: header says the payload is 16712 bytes, the file has 16711 after the origin",
    ),
    # obligation 2
    "bad-magic.smolmachine": (
        "open",
        "NotASmolmachine",
        111,
        "bad-magic.smolmachine: not a .smolmachine payload or packed executable",
    ),
    # obligation 3
    "major-2.smolmachine": (
        "open",
        "UnsupportedVersion",
        112,
        "major-2.smolmachine: format version 2.0 is not supported (this smolpack reads 1.x)",
    ),
    # obligation 4
    "header-flags.smolmachine": (
        "open",
        "UnsupportedVersion",
        112,
        "header-flags.smolmachine: header flags 0x00000001 set; this smolpack knows none (written by a newer smolpack?)",
    ),
    # obligation 5
    "header-size-64.smolmachine": (
        "open",
        "BadLayout",
        115,
        "header-size-64.smolmachine: header field header_size is 64 (expected a multiple of 8 in 128..65536)",
    ),
    # obligation 7
    "index-out-of-range.smolmachine": (
        "open",
        "BadLayout",
        115,
        "index-out-of-range.smolmachine: index range [1099511627776, 1099511627920) is not inside [128, 16712) or its size is not in 16..16777216",
    ),
    # obligation 8
    "index-digest.smolmachine": (
        "open",
        "IndexDigestMismatch",
        113,
        "index-digest.smolmachine: index digest mismatch (expected 9995324ca19f…, found 3f86fdb06e6d…)",
    ),
    # obligation 9
    "entry-count-huge.smolmachine": (
        "open",
        "BadLayout",
        115,
        "entry-count-huge.smolmachine: index field entry_count 4294967295 needs 549755813776 bytes, index_size is 144",
    ),
    # obligation 9
    "entry-size-small.smolmachine": (
        "open",
        "BadLayout",
        115,
        "entry-size-small.smolmachine: index field entry_size is 120 (expected a multiple of 8, at least 128)",
    ),
    # obligation 10
    "bad-name.smolmachine": (
        "open",
        "BadLayout",
        115,
        "bad-name.smolmachine: section 1 name 'Disk' must be [a-z0-9._/-] with each '/' component starting with [a-z0-9]",
    ),
    # obligation 10
    "name-dotdot.smolmachine": (
        "open",
        "BadLayout",
        115,
        "name-dotdot.smolmachine: section 1 name 'state/../../etc' must be [a-z0-9._/-] with each '/' component starting with [a-z0-9]",
    ),
    # obligation 10
    "duplicate-name.smolmachine": (
        "open",
        "BadLayout",
        115,
        "duplicate-name.smolmachine: section 1 repeats the name 'manifest'",
    ),
    # obligation 10
    "misaligned-offset.smolmachine": (
        "open",
        "BadLayout",
        115,
        "misaligned-offset.smolmachine: section 'disk' offset 16392 is not aligned to 2**14",
    ),
    # obligation 10
    "raw-align-small.smolmachine": (
        "open",
        "BadLayout",
        115,
        "raw-align-small.smolmachine: section 'disk' has codec none but align_log2 3 (expected at least 14)",
    ),
    # obligation 10
    "raw-size-mismatch.smolmachine": (
        "open",
        "BadLayout",
        115,
        "raw-size-mismatch.smolmachine: section 'disk' has codec none but stored_size 4096 != raw_size 4097",
    ),
    # obligation 10
    "section-into-index.smolmachine": (
        "open",
        "BadLayout",
        115,
        "section-into-index.smolmachine: section 'disk' range [32768, 36928) is not inside [128, 36864)",
    ),
    # obligation 11
    "overlap.smolmachine": (
        "open",
        "BadLayout",
        115,
        "overlap.smolmachine: sections 'manifest' [16384, 16566) and 'kernel' [16392, 18480) overlap",
    ),
    # obligation 12
    "no-manifest.smolmachine": (
        "open",
        "BadLayout",
        115,
        "no-manifest.smolmachine: index has 0 manifest sections, expected 1",
    ),
    # obligation 14, 16
    "section-digest.smolmachine": (
        "verify",
        "SectionDigestMismatch",
        114,
        "section-digest.smolmachine: section 'disk' digest mismatch (expected db2bfa71857d…, found d5d2f2651ddc…)",
    ),
    # obligation 14
    "manifest-digest.smolmachine": (
        "manifest",
        "SectionDigestMismatch",
        114,
        "manifest-digest.smolmachine: section 'manifest' digest mismatch (expected 1e9c26b03a7c…, found 2e422f4c7801…)",
    ),
    # obligation 15
    "manifest-bad-json.smolmachine": (
        "manifest",
        "BadLayout",
        115,
        "manifest-bad-json.smolmachine: not valid UTF-8 JSON (Expecting property name enclosed in double quotes: line 1 column 22 (char 21))",
    ),
    # obligation 15
    "manifest-missing-section.smolmachine": (
        "manifest",
        "BadLayout",
        115,
        "manifest-missing-section.smolmachine: manifest state 'qemu-x86_64' names section 'qemu-x86_64/migration', which the index does not have",
    ),
    # obligation 15
    "manifest-version-2.smolmachine": (
        "manifest",
        "UnsupportedVersion",
        112,
        "manifest-version-2.smolmachine: manifest format_version 2 is not supported (this smolpack reads 1)",
    ),
    # obligation 13
    "unknown-codec.smolmachine": (
        "read:kernel",
        "UnsupportedVersion",
        112,
        "unknown-codec.smolmachine: section 'kernel' uses codec 7; this smolpack knows 0 (none) and 1 (zstd)",
    ),
    # obligation 13
    "entry-flags.smolmachine": (
        "read:kernel",
        "UnsupportedVersion",
        112,
        "entry-flags.smolmachine: section 'kernel' has flags 0x00000004; this smolpack knows none",
    ),
    # obligation 14
    "zstd-size-mismatch.smolmachine": (
        "read:kernel",
        "BadLayout",
        115,
        "zstd-size-mismatch.smolmachine: section 'kernel' decodes to more than raw_size 12799 bytes",
    ),
    # obligation 14
    "zstd-corrupt.smolmachine": (
        "read:kernel",
        "BadLayout",
        115,
        "zstd-corrupt.smolmachine: section 'kernel' decodes to 0 bytes, raw_size is 12800",
    ),
    # obligation 15: a state's engine must be a string even when it is skipped
    "manifest-state-no-engine.smolmachine": (
        "manifest",
        "BadLayout",
        115,
        "manifest-state-no-engine.smolmachine: field 'states[0].engine' must be a string (found 7)",
    ),
}


def run_operation(path: str, operation: str) -> None:
    """Open `path` and perform `operation` (open | verify | manifest | read:<name>)."""
    from smolpack.payload import open_payload

    with open_payload(path) as payload:
        if operation == "verify":
            payload.verify()
        elif operation == "manifest":
            payload.manifest()
        elif operation.startswith("read:"):
            payload.read_section(operation[len("read:") :])
        elif operation != "open":
            raise ValueError(f"unknown operation {operation!r}")


def build() -> dict[str, bytes]:
    """Every file under formats/vectors/smolmachine/ (except this script), by relative path."""
    import contextlib

    from smolpack.errors import PayloadError
    from smolpack.payload import open_payload
    from smolpack.payload.describe import describe

    files: dict[str, bytes] = {}
    cases = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for name, data in valid_vectors().items():
            Path(name).write_bytes(data)
            with open_payload(name) as payload:
                payload.verify()
                info = describe(payload)
            del info["path"]
            files[f"valid/{name}"] = data
            stem = name.removesuffix(".smolmachine")
            files[f"valid/{stem}.inspect.json"] = (json.dumps(info, indent=2) + "\n").encode()
        for name, (data, operation) in invalid_vectors().items():
            Path(name).write_bytes(data)
            want_op, want_error, want_exit, want_message = EXPECTED[name]
            assert want_op == operation, f"{name}: EXPECTED says {want_op}, built for {operation}"
            try:
                run_operation(name, operation)
            except PayloadError as err:
                got = (type(err).__name__, err.exit_code, err.message)
                if got != (want_error, want_exit, want_message):
                    raise AssertionError(
                        f"{name}: the reader says {got}, the spec expects "
                        f"{(want_error, want_exit, want_message)}"
                    ) from None
            else:
                raise AssertionError(f"invalid vector {name} passed {operation}")
            cases.append(
                {
                    "file": name,
                    "operation": operation,
                    "error": want_error,
                    "exit_code": want_exit,
                    "message": want_message,
                }
            )
            files[f"invalid/{name}"] = data
    files["invalid/cases.json"] = (json.dumps(cases, indent=2, ensure_ascii=False) + "\n").encode()
    files["README.md"] = readme(cases).encode()
    return files


def readme(cases: list[dict[str, Any]]) -> str:
    lines = [
        "# `.smolmachine` golden vectors",
        "",
        "Generated by `python formats/vectors/smolmachine/generate.py` (do not edit by hand);",
        "`tests/test_payload_vectors.py` regenerates them in memory and compares byte for byte.",
        "Spec: `formats/smolmachine.md`. Messages name the file as the reader was given it.",
        "",
        "## valid/",
        "",
        "Each opens, verifies and reads; `<name>.inspect.json` is the expected",
        "`smolpack inspect --json` output without its `path` key.",
        "",
        "| File | Holds | Expected inspect JSON |",
        "|------|-------|-----------------------|",
    ]
    for name, note in VALID_NOTES.items():
        stem = name.removesuffix(".smolmachine")
        lines.append(f"| `valid/{name}` | {note} | `valid/{stem}.inspect.json` |")
    lines += [
        "",
        "## invalid/",
        "",
        "Each fails the given operation (`open`, `verify`, `manifest`, `read:<section>`) with the",
        "given error class, exit code and exact message; the same data is in `invalid/cases.json`.",
        "The expectations are written by hand from the spec (`EXPECTED` in generate.py, with the",
        "reader obligation each case exercises); the generator refuses to write the vectors when",
        "the reader disagrees, so they are never regenerated from the reader's own output.",
        "",
        "| File | Operation | Error | Exit | Message |",
        "|------|-----------|-------|-----:|---------|",
    ]
    for c in cases:
        message = c["message"].replace("|", "\\|")
        lines.append(
            f"| `{c['file']}` | {c['operation']} | `{c['error']}` | {c['exit_code']} | "
            f"`{message}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    files = build()
    for sub in ("valid", "invalid"):
        for old in (HERE / sub).glob("*"):
            old.unlink()
    for rel, data in files.items():
        (HERE / rel).parent.mkdir(parents=True, exist_ok=True)
        (HERE / rel).write_bytes(data)
    print(f"wrote {len(files)} files under {HERE}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for `smolpack`
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    main()
