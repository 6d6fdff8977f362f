"""Property tests: hostile bytes only ever raise PayloadError, quickly, with bounded memory.

zstd's two families: arbitrary input -> result or our error; and structured
input (valid payloads mutated, and indexes with random fields but a correct
digest, so the checks behind the digest are reached too).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from payload_helpers import VECTORS

from smolpack.errors import PayloadError
from smolpack.payload import open_payload

SAMPLE = (VECTORS / "valid" / "sample.smolmachine").read_bytes()
MINIMAL = (VECTORS / "valid" / "minimal.smolmachine").read_bytes()
FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield os.path.join(tmp, "f.smolmachine")


def exercise(path: str, data: bytes) -> None:
    """Everything a consumer might do; only PayloadError may escape."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        with open_payload(path) as p:
            for name in p.sections:
                try:
                    p.read_section(name, max_size=1 << 20)
                except PayloadError:
                    pass
            p.manifest()
            p.verify()
    except PayloadError:
        pass


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"SMOLMACH")
@example(data=b"\x7fELF\x02\x01\x01" + bytes(57))
@example(data=struct.pack("<IiiIIIII", 0xFEEDFACF, 0, 0, 0, 0xFFFFFFFF, 8, 0, 0) + bytes(8))
def test_random_bytes(scratch: str, data: bytes) -> None:
    exercise(scratch, data)


@FUZZ
@given(
    base=st.sampled_from([SAMPLE, MINIMAL]),
    edits=st.lists(
        st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
)
def test_valid_payload_with_bytes_changed(
    scratch: str, base: bytes, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(base)
    for at, value in edits:
        data[at % len(data)] = value
    exercise(scratch, bytes(data))


@FUZZ
@given(
    base=st.sampled_from([SAMPLE, MINIMAL]),
    cut=st.integers(0, len(SAMPLE)),
    insert_at=st.integers(0, len(SAMPLE)),
    insert=st.binary(max_size=64),
)
def test_valid_payload_truncated_or_grown(
    scratch: str, base: bytes, cut: int, insert_at: int, insert: bytes
) -> None:
    at = insert_at % (len(base) + 1)
    exercise(scratch, base[:at] + insert + base[at:])
    exercise(scratch, base[: cut % (len(base) + 1)])


ENTRY = struct.Struct("<32sIIIIQQQ32s24x")
INDEX_AT = struct.unpack_from("<Q", SAMPLE, 32)[0]
REAL = [list(ENTRY.unpack_from(SAMPLE, INDEX_AT + 16 + i * 128)) for i in range(6)]
FIELD_VALUES = [
    st.sampled_from([b"manifest", b"disk", b"kernel", b"Bad", b"a/../b", b"\xff", b"", b"x\0y"]),
    st.integers(0, 6),  # kind
    st.integers(0, 2),  # codec
    st.sampled_from([0, 1]),  # flags
    st.sampled_from([0, 3, 14, 30, 31, 63, 2**32 - 1]),  # align_log2
    st.one_of(st.integers(0, len(SAMPLE)), st.integers(0, 2**64 - 1)),  # offset
    st.one_of(st.integers(0, 70000), st.integers(0, 2**64 - 1)),  # stored_size
    st.one_of(st.integers(0, 70000), st.integers(0, 2**64 - 1)),  # raw_size
]


@FUZZ
@given(
    keep=st.one_of(st.just([0, 1, 2, 3, 4, 5]), st.lists(st.integers(0, 5), max_size=7)),
    edits=st.lists(
        st.integers(0, 7).flatmap(
            lambda f: st.tuples(st.integers(0, 6), st.just(f), FIELD_VALUES[f])
        ),
        max_size=3,
    ),
    entry_count_delta=st.sampled_from([0, 0, 0, 1, -1, 2**31]),
    entry_size=st.sampled_from([128, 128, 128, 136, 120, 0, 2**32 - 1]),
)
@example(keep=[0, 1, 2, 3, 4, 5], edits=[], entry_count_delta=0, entry_size=128)
def test_index_with_changed_fields_behind_a_correct_digest(
    scratch: str,
    keep: list[int],
    edits: list[tuple[int, int, object]],
    entry_count_delta: int,
    entry_size: int,
) -> None:
    """Real entries of valid/sample, some dropped, repeated or with fields changed;
    the sha256 field follows the bytes the entry now points at, and the index
    digest is recomputed, so every check after obligation 8 gets exercised."""
    body = SAMPLE[:INDEX_AT]
    rows = [list(REAL[i]) for i in keep]
    for row_i, field, value in edits:
        if rows:
            rows[row_i % len(rows)][field] = value
    packed = b""
    for name, kind, codec, flags, align, offset, stored, raw, _ in rows:
        digest = hashlib.sha256(body[offset : offset + stored]).digest()
        packed += ENTRY.pack(name, kind, codec, flags, align, offset, stored, raw, digest)
        packed += bytes(max(0, min(entry_size, 256) - 128))
    count = (len(rows) + entry_count_delta) % (1 << 32)
    index = struct.pack("<II8x", count, entry_size) + packed
    header = bytearray(body[:128])
    struct.pack_into("<QQQ32s", header, 24, INDEX_AT + len(index), INDEX_AT, len(index),
                     hashlib.sha256(index).digest())  # fmt: skip
    exercise(scratch, bytes(header) + body[128:] + index)
