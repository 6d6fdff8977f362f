"""Create stage, image → root tree: stream one (possibly compressed) tar into the tree.

Implements formats/image-inputs.md, "Compression" and "Extraction rules". The
archive is read strictly as a stream (mode `r|`), so a compressed layer is never
decompressed to disk; a blob digest is computed over the bytes as they are read
(`HashingReader`). Stricter than `tarfile` on purpose: an archive that ends
without its end-of-archive block is reported as truncated, not silently cut.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import zstandard

from smolpack.errors import ImageError
from smolpack.image._tree_writer import EntryMeta, EntryProblem, TreeWriter, split_name

_READ_CHUNK = 1 << 20  # 1 MiB reads from the member stream
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

# Magic bytes → compression name (formats/image-inputs.md, "Compression").
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
)


class Readable(Protocol):
    """The only file method the readers here need."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Corrupt(tarfile.TarError):
    """The compressed or tar stream is damaged; the text says how. A `TarError`, so
    readers of whole image archives (docker/OCI, `_resolve`) report it as one too."""


# Header values the tree (and ext4) can hold; anything else is a hostile or broken header.
_ID_MAX = 2**32 - 2  # uid/gid; 2**32 - 1 is chown's "leave unchanged"
_MTIME_MIN = -(2**31)  # ext4 timestamps: 1901-12-13 ...
_MTIME_MAX = 2**34 - 2**31  # ... to 2446-05-10
_SIZE_MAX = 2**48  # 256 TiB: beyond any image, and tarfile's seeks stay below 2**63
# CPython's header parser turns some malformed fields into these instead of tarfile errors
# (e.g. a pax `path` with a NUL byte, a base-256 number it cannot convert).
_PARSE_ERRORS = (ValueError, OverflowError, UnicodeError, TypeError, IndexError, KeyError)
# A pax or GNU long-name header's data is read into memory whole by `tarfile`: a forged
# size (GNU base-256 allows 2**95) would allocate that much. Real ones hold a few KiB
# (names, xattrs); 1 MiB leaves room for big SELinux/ACL xattrs.
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_META_MAX = 1 << 20


class StrictTarInfo(tarfile.TarInfo):
    """`tarfile` ends the archive quietly at a short or bad header; we refuse. It also
    accepts any number a pax or GNU base-256 field holds (mtime=1e30, nan, size=-5,
    uid=2**40): every member is checked here, before tarfile or the tree uses it."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> StrictTarInfo:
        try:
            info = super().fromtarfile(tarfile_)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
            raise _Corrupt("truncated tar (no end-of-archive marker)") from None
        except tarfile.InvalidHeaderError:  # type: ignore[attr-defined]
            raise _Corrupt("bad tar header checksum") from None
        except _PARSE_ERRORS as err:
            raise _Corrupt(f"corrupt tar header ({err})") from None
        problem = _header_problem(info)
        if problem:
            raise _Corrupt(f"member {info.name[:200]!r}: bad tar header: {problem}")
        return info

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        # Runs before tarfile reads a pax/GNU header's data (see _META_MAX).
        if self.type in _META_TYPES and not 0 <= self.size <= _META_MAX:
            raise _Corrupt(f"bad tar header: extended header of {self.size} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


def _header_problem(m: tarfile.TarInfo) -> str | None:
    """What is wrong with a parsed header's values, None when they are usable."""
    for field in ("size", "uid", "gid", "mode"):
        value = getattr(m, field)
        if not isinstance(value, int):
            return f"{field} {value!r} is not an integer"
    if not 0 <= m.size <= _SIZE_MAX:
        return f"size {m.size} out of range"
    if not 0 <= m.uid <= _ID_MAX or not 0 <= m.gid <= _ID_MAX:
        return f"owner {m.uid}:{m.gid} out of range (0..{_ID_MAX})"
    if not 0 <= m.mode <= 0o7777777:
        return f"mode {m.mode:o} out of range"
    mtime = m.mtime
    if not isinstance(mtime, int | float) or not _MTIME_MIN <= mtime < _MTIME_MAX:
        # NaN fails both comparisons and lands here too.
        return f"mtime {mtime!r} out of range"
    if "\0" in m.name or "\0" in m.linkname:
        return "name or link target holds a NUL byte"
    return None


class _Prefixed:
    """A reader that first returns bytes already peeked from `raw`."""

    def __init__(self, head: bytes, raw: Readable) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._raw.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._raw.read(n)


class _Guarded:
    """Turn every decompressor failure into `_Corrupt` so host I/O errors stay apart."""

    def __init__(self, inner: Any, kind: str) -> None:
        self._inner = inner
        self._kind = kind

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._inner.read(n)
        except EOFError:
            raise _Corrupt(f"truncated {self._kind} stream") from None
        except (OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError):
            raise _Corrupt(f"corrupt {self._kind} stream") from None
        return data


class HashingReader:
    """Pass bytes through while computing their sha256 (an OCI blob check)."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def sniff_compression(head: bytes) -> str | None:
    """Compression named by the magic bytes, "tar" for plain tar, None if neither."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    if head[257:262] == b"ustar" or (len(head) >= 512 and not head[:512].strip(b"\0")):
        return "tar"
    return None


def open_decompressed(raw: Readable, label: str) -> Readable:
    """Wrap `raw` so it reads as a plain tar stream, choosing by magic bytes."""
    head = raw.read(512)
    kind = sniff_compression(head)
    src = _Prefixed(head, raw)
    if kind is None:
        raise ImageError(f"{label}: not a tar archive (unknown format)")
    if kind == "tar":
        return src
    inner: Any
    if kind == "gzip":
        inner = gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[call-overload]
    elif kind == "xz":
        inner = lzma.LZMAFile(src)  # type: ignore[arg-type]
    else:
        # stream_reader returns b"" at a cut frame instead of raising; the strict
        # tar reader (end-of-archive marker, member sizes) and blob digests catch that.
        inner = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)  # type: ignore[arg-type]
    return _Guarded(inner, kind)


def _meta(member: tarfile.TarInfo) -> EntryMeta:
    return EntryMeta(
        mode=member.mode,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=int(member.mtime * 1_000_000_000),
    )


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        k[len(prefix) :]: v.encode("utf-8", "surrogateescape")
        for k, v in member.pax_headers.items()
        if k.startswith(prefix)
    }


def _chunks(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    fobj = tf.extractfile(member)
    if fobj is None:
        return
    left = member.size
    while left:
        data = fobj.read(min(left, _READ_CHUNK))
        if not data:
            raise _Corrupt(f"truncated tar (archive ends inside member '{member.name}')")
        left -= len(data)
        yield data


def _apply(writer: TreeWriter, tf: tarfile.TarFile, m: tarfile.TarInfo, *, layer: bool) -> None:
    parts = split_name(m.name)
    base = parts[-1] if parts else ""
    if layer and base.startswith(_WHITEOUT):
        if base == _OPAQUE:
            writer.opaque(parts[:-1])
        elif not base.startswith(_WHITEOUT + _WHITEOUT):  # .wh..wh.* is aufs bookkeeping
            hidden = base[len(_WHITEOUT) :]
            if hidden in ("", ".", ".."):
                raise EntryProblem("whiteout names no entry")
            writer.whiteout((*parts[:-1], hidden))
        return
    if m.isreg():
        if m.sparse is not None:
            raise EntryProblem("GNU sparse members are not supported")
        writer.add_file(parts, _meta(m), _chunks(tf, m), xattrs=_xattrs(m))
    elif m.isdir():
        writer.add_dir(parts, _meta(m))
    elif m.issym():
        writer.add_symlink(parts, _meta(m), m.linkname)
    elif m.islnk():
        writer.add_hardlink(parts, split_name(m.linkname))
    elif m.isfifo() or m.ischr() or m.isblk():
        # `docker export` and debootstrap trees carry /dev nodes; the guest mounts its own
        # devtmpfs on /dev, and a node from an image could reach a host-named device.
        writer.skipped_special += 1
    else:
        raise EntryProblem(f"unsupported tar member type {m.type!r}")


def extract_tar(raw: Readable, writer: TreeWriter, *, label: str, layer: bool) -> str:
    """Apply one tar stream (any supported compression) to the tree.

    `layer=True` interprets `.wh.` whiteouts as an image layer; a plain rootfs
    tarball (`layer=False`) is extracted literally. `label` starts every error.
    Returns the sha256 digest of the uncompressed tar (a Docker `diff_id`); the
    stream is read to its end so a damaged compressed trailer is noticed too.
    """
    plain = HashingReader(open_decompressed(raw, label))
    member_name = ""
    try:
        with tarfile.open(fileobj=plain, mode="r|", tarinfo=StrictTarInfo) as tf:  # type: ignore[call-overload]
            for member in tf:
                member_name = member.name
                _apply(writer, tf, member, layer=layer)
            member_name = ""
        plain.drain()
        return plain.digest()
    except EntryProblem as err:
        raise ImageError(f"{label}: member '{member_name}': {err}") from None
    except _Corrupt as err:
        raise ImageError(f"{label}: {err}") from None
    except tarfile.ReadError as err:
        if member_name:
            raise ImageError(
                f"{label}: truncated tar (archive ends inside member '{member_name}')"
            ) from None
        raise ImageError(f"{label}: not a tar archive ({err})") from None
    except tarfile.TarError as err:
        raise ImageError(f"{label}: corrupt tar ({err})") from None
    except OSError as err:
        where = f"member '{member_name}'" if member_name else "extraction"
        raise ImageError(f"{label}: {where}: cannot write to the tree: {err.strerror}") from None
