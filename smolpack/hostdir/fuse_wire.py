"""The FUSE wire format, the subset `server.HostDir` speaks (linux/fuse.h, protocol 7.31).

Little-endian structs, opcodes and flags as the guest kernel sends and expects them, and the
encoders of the replies. A request is IN_HEADER then its opcode's body; a reply is
OUT_HEADER (a negative errno, or 0 and a body). Stdlib only: the launcher imports it.
"""

from __future__ import annotations

import os
import struct

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
ENTRY_HEAD = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs
ATTR_HEAD = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # fuse_init_out, 64 bytes
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")  # fuse_setattr_in, 88 bytes
RW_IN = struct.Struct("<QQIIQII")  # fuse_read_in / fuse_write_in, 40 bytes
DIRENT = struct.Struct("<QQII")  # ino off namelen type

# Opcodes (linux/fuse.h).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, FLUSH, INIT, OPENDIR, READDIR = 17, 18, 20, 25, 26, 27, 28
RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT, DESTROY = 29, 30, 34, 35, 36, 38
BATCH_FORGET, RENAME2 = 42, 45
NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)  # the kernel waits for no answer to these

FUSE_ROOT_ID = 1  # the nodeid of the mounted directory

# SETATTR's `valid` bits, and the INIT flags the server may accept.
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 16, 32, 64, 128, 256
FUSE_ASYNC_READ, FUSE_BIG_WRITES, FUSE_MAX_PAGES = 1 << 0, 1 << 5, 1 << 22


class FuseError(Exception):
    """Answer the request with this errno (OUT_HEADER's error, negated)."""

    def __init__(self, code: int) -> None:
        self.code = code


def reply(unique: int, error: int, body: bytes) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body


def attr(st: os.stat_result, owner: int) -> bytes:
    """fuse_attr of `st`, owned by `owner` (uid and gid alike)."""
    return ATTR.pack(
        st.st_ino, st.st_size, st.st_blocks,
        int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
        st.st_atime_ns % 10**9, st.st_mtime_ns % 10**9, st.st_ctime_ns % 10**9,
        st.st_mode, st.st_nlink, owner, owner,
        0, 4096, 0,
    )  # fmt: skip


def entry_out(nodeid: int, ttl_s: int, fattr: bytes) -> bytes:
    return ENTRY_HEAD.pack(nodeid, 0, ttl_s, ttl_s, 0, 0) + fattr


def attr_out(ttl_s: int, fattr: bytes) -> bytes:
    return ATTR_HEAD.pack(ttl_s, 0, 0) + fattr


def init_out(minor: int, readahead: int, flags: int, max_write: int) -> bytes:
    return INIT_OUT.pack(
        7, minor, readahead, flags, 16, 12, max_write, 1,
        max_write // 4096, 0, 0,
    )  # fmt: skip


def open_out(fh: int) -> bytes:
    return struct.pack("<QII", fh, 0, 0)


def write_out(size: int) -> bytes:
    return struct.pack("<II", size, 0)


def dirent(ino: int, off: int, name: bytes, kind: int) -> bytes:
    """One READDIR record, padded to 8 bytes."""
    rec = DIRENT.pack(ino, off, len(name), kind) + name
    return rec + b"\0" * (-len(rec) % 8)


def statfs_out(v: os.statvfs_result) -> bytes:
    return struct.pack(
        "<QQQQQIIII24x", v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree,
        v.f_bsize, v.f_namemax, v.f_frsize, 0,
    )  # fmt: skip
