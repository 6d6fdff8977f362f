"""Untrusted tar headers (pax records, GNU/ustar numeric fields) → a tree or one ImageError.

Python's `tarfile` accepts any number a pax record or a GNU base-256 field holds, and the
tree writer then failed with OverflowError/ValueError (internal errors). Each hostile value
found is pinned as an `@example`; the strategies mutate exactly the fields a header has.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from image_helpers import E, make_tar

from smolpack.errors import ImageError
from smolpack.image import prepare_rootfs

END = b"\0" * 1024
PAX_KEYS = ["mtime", "atime", "ctime", "uid", "gid", "size", "path", "linkpath", "uname",
            "gname", "hdrcharset", "SCHILY.xattr.user.x", "GNU.sparse.size",
            "GNU.sparse.map", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
            "GNU.sparse.realsize", "GNU.sparse.numblocks", "GNU.sparse.offset"]  # fmt: skip
TRICKY = ["1e30", "-1e30", "nan", "inf", "-inf", "-5", "0", str(2**40), str(2**64), "-1",
          "1.5", "", "abc", "0x10", "1e3", "a\x00b", "../x", "/", "BINARY", "1,2,3",
          "99999999999999999999999"]  # fmt: skip


def _block(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _pax_records(records: list[tuple[str, str]]) -> bytes:
    out = b""
    for key, value in records:
        body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


def pax_member(records: list[tuple[str, str]], kind: bytes, data: bytes) -> bytes:
    """One member preceded by a pax extended header holding `records`, raw."""
    pax = _pax_records(records)
    head = tarfile.TarInfo("PaxHeader/f")
    head.type, head.size = tarfile.XHDTYPE, len(pax)
    main = tarfile.TarInfo("f")
    main.type, main.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    return (
        head.tobuf(tarfile.USTAR_FORMAT)
        + _block(pax)
        + main.tobuf(tarfile.USTAR_FORMAT)
        + _block(data if kind == tarfile.REGTYPE else b"")
    )


# (offset, size) of a header's numeric fields (POSIX ustar; GNU allows base-256 in each)
FIELDS = {"mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
          "mtime": (136, 12), "devmajor": (329, 8), "devminor": (337, 8)}  # fmt: skip


def with_field(archive: bytes, header_at: int, field: str, raw: bytes) -> bytes:
    """`archive` with one numeric field of the header at `header_at` replaced (checksum fixed)."""
    off, size = FIELDS[field]
    buf = bytearray(archive)
    start = header_at + off
    buf[start : start + size] = raw.ljust(size, b"\0")[:size]
    buf[header_at + 148 : header_at + 156] = b" " * 8
    chksum = sum(buf[header_at : header_at + 512])
    buf[header_at + 148 : header_at + 156] = b"%06o\0 " % chksum
    return bytes(buf)


def base256(value: int, size: int) -> bytes:
    """GNU's base-256 numeric encoding (first byte 0x80 positive, 0xff negative)."""
    raw = (value % (1 << (8 * size - 8))).to_bytes(size - 1, "big")
    return (b"\xff" if value < 0 else b"\x80") + raw


def tree_or_image_error(data: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in.tar").write_bytes(data)
        try:
            prepare_rootfs(root / "in.tar", root / "out")
        except ImageError as err:
            assert "\n" not in str(err)
            assert not (root / "out").exists()
            return str(err).replace(str(root / "in.tar"), "IMG")
        assert sorted(p.name for p in root.iterdir()) == ["in.tar", "out"]
        return "ok"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (("mtime", "1e30"), "mtime 1e+30 out of range"),
        (("mtime", "nan"), "mtime nan out of range"),
        (("mtime", "-inf"), "mtime -inf out of range"),
        (("uid", str(2**40)), f"owner {2**40}:0 out of range (0..4294967294)"),
        (("gid", "-1"), "owner 0:-1 out of range (0..4294967294)"),
        (("size", "-5"), "size -5 out of range"),
        (("path", "a\x00b"), "name or link target holds a NUL byte"),
    ],
)
def test_hostile_pax_value_is_one_image_error(record: tuple[str, str], message: str) -> None:
    data = pax_member([record], tarfile.REGTYPE, b"hello") + END
    name = "a\\x00b" if record[0] == "path" else "f"
    assert tree_or_image_error(data) == f"IMG: member '{name}': bad tar header: {message}"


def test_gnu_base256_uid_is_one_image_error() -> None:
    data = make_tar([E("f", data=b"x")])
    # make_tar writes a pax archive: the first header is "f" itself (no pax record needed).
    bad = with_field(data, 0, "uid", base256(2**40, 8))
    assert tree_or_image_error(bad) == (
        f"IMG: member 'f': bad tar header: owner {2**40}:0 out of range (0..4294967294)"
    )


def test_hostile_header_in_a_docker_archive_is_one_image_error() -> None:
    # Top-level manifest.json makes it a docker-archive: read by name, not as a stream.
    data = make_tar([E("manifest.json", data=b"[]")])
    bad = with_field(data, 0, "mtime", base256(-(2**60), 12))
    out = tree_or_image_error(bad)
    assert out == (f"IMG: member 'manifest.json': bad tar header: mtime {-(2**60)} out of range")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(PAX_KEYS), st.one_of(st.sampled_from(TRICKY), st.text())),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
)
@example([("mtime", "1e30")], tarfile.REGTYPE)
@example([("size", "-5")], tarfile.DIRTYPE)
@example([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")], tarfile.REGTYPE)
@example([("GNU.sparse.map", "1,2,3")], tarfile.REGTYPE)
@example([("linkpath", "a\x00b")], tarfile.SYMTYPE)
def test_pax_headers_fuzz(records: list[tuple[str, str]], kind: bytes) -> None:
    tree_or_image_error(pax_member(records, kind, b"hello") + END)


_GNU = io.BytesIO()
with tarfile.open(fileobj=_GNU, mode="w", format=tarfile.GNU_FORMAT) as _tf:
    _ti = tarfile.TarInfo("d/" + "n" * 120)  # a long name: a ././@LongLink header first
    _ti.size = 3
    _tf.addfile(_ti, io.BytesIO(b"abc"))
BASES = {"gnu-longlink": (_GNU.getvalue(), 0), "gnu-member": (_GNU.getvalue(), 1024),
         "ustar": (make_tar([E("f", data=b"abc")]), 0)}  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(BASES)),
    st.sampled_from(sorted(FIELDS)),
    st.one_of(
        st.binary(max_size=12),
        st.integers(-(2**80), 2**80).map(lambda v: base256(v, 12)),
        st.integers(0, 2**40).map(lambda v: b"%o" % v),
    ),
)
@example("gnu-member", "size", base256(-5, 12))
@example("gnu-member", "mtime", base256(2**70, 12))
@example("gnu-longlink", "size", base256(2**60, 12))  # was a MemoryError (read whole)
@example("ustar", "uid", b"\xff" * 8)
@example("gnu-member", "size", base256(17592186038785, 12))  # was OSError (seek)
@example("gnu-member", "size", base256(9223372036854774273, 12))  # was ValueError (seek)
def test_numeric_header_fields_fuzz(base: str, field: str, raw: bytes) -> None:
    archive, header_at = BASES[base]
    tree_or_image_error(with_field(archive, header_at, field, raw))


def test_huge_gnu_long_name_header_is_refused_without_reading_it() -> None:
    archive, at = BASES["gnu-longlink"]
    out = tree_or_image_error(with_field(archive, at, "size", base256(2**60, 12)))
    assert out == f"IMG: bad tar header: extended header of {2**60} bytes"
