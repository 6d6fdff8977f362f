"""hostdir.server.HostDir against the FUSE wire format (linux/fuse.h), without a VM:
confinement, ownership, read-only, and requests split across feeds (formats/agent-protocol.md
5.8)."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from smolpack.hostdir import fuse_wire as w
from smolpack.hostdir.server import HostDir


class Client:
    """Speaks to a HostDir like the guest kernel would (one request at a time)."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.fs = HostDir(str(root), read_only=read_only)
        self.unique = 0
        err, body = self.call(w.INIT, 0, struct.pack("<IIII", 7, 38, 131072, 0))
        assert err == 0 and struct.unpack_from("<II", body) == (7, 31)

    def call(self, op: int, node: int, body: bytes = b"", split: int = 0) -> tuple[int, bytes]:
        self.unique += 1
        req = w.IN_HEADER.pack(w.IN_HEADER.size + len(body), op, self.unique, node, 0, 0, 1, 0, 0)
        req += body
        if split:  # the channel may cut a request anywhere
            first, done = self.fs.feed(req[:split])
            assert (first, done) == (b"", 0)
            out, done = self.fs.feed(req[split:])
        else:
            out, done = self.fs.feed(req)
        assert done == len(req)
        length, err, unique = w.OUT_HEADER.unpack_from(out)
        assert (length, unique) == (len(out), self.unique)
        return err, out[w.OUT_HEADER.size :]

    def lookup(self, parent: int, name: bytes) -> tuple[int, int]:
        err, body = self.call(w.LOOKUP, parent, name + b"\0")
        return err, (struct.unpack_from("<Q", body)[0] if not err else 0)

    def open_read(self, node: int) -> tuple[int, bytes]:
        err, body = self.call(w.OPEN, node, struct.pack("<II", os.O_RDONLY, 0))
        if err:
            return err, b""
        fh = struct.unpack_from("<Q", body)[0]
        return self.call(w.READ, node, w.RW_IN.pack(fh, 0, 4096, 0, 0, 0, 0))


def test_names_that_could_climb_out_are_refused(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "outside").write_text("secret")
    c = Client(tmp_path / "share")
    for name in (b"..", b".", b"../outside", b"a/b", str(tmp_path / "outside").encode()):
        assert c.lookup(1, name)[0] in (-errno.EINVAL, -errno.ENOENT), name


def test_a_symlink_is_never_followed_on_the_host(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "outside").write_text("secret")
    (share / "link").symlink_to(tmp_path / "outside")
    c = Client(share)
    err, node = c.lookup(1, b"link")
    assert err == 0
    assert c.open_read(node)[0] == -errno.ELOOP
    assert c.call(w.READLINK, node) == (0, str(tmp_path / "outside").encode())
    # Creating through it is refused too (O_NOFOLLOW), the outside file is untouched.
    create = struct.pack("<IIII", os.O_WRONLY | os.O_CREAT, 0o644, 0o022, 0) + b"link\0"
    assert c.call(w.CREATE, 1, create)[0] in (-errno.EEXIST, -errno.ELOOP)
    assert (tmp_path / "outside").read_text() == "secret"


def test_read_write_and_ownership(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"hello")
    c = Client(tmp_path)
    err, node = c.lookup(1, b"in.txt")
    assert c.open_read(node) == (0, b"hello")
    create = struct.pack("<IIII", os.O_WRONLY | os.O_CREAT, 0o640, 0o022, 0) + "é x\0".encode()
    err, body = c.call(w.CREATE, 1, create, split=7)
    assert err == 0
    new_node = struct.unpack_from("<Q", body)[0]
    fh = struct.unpack_from("<Q", body, w.ENTRY_HEAD.size + w.ATTR.size)[0]
    data = os.urandom(100_000)
    wr = w.RW_IN.pack(fh, 0, len(data), 0, 0, 0, 0) + data
    err, body = c.call(w.WRITE, new_node, wr, split=w.IN_HEADER.size + 50_000)
    assert (err, struct.unpack_from("<I", body)[0]) == (0, len(data))
    assert c.call(w.RELEASE, new_node, struct.pack("<QIIQ", fh, 0, 0, 0))[0] == 0
    made = tmp_path / "é x"
    assert made.read_bytes() == data
    assert made.stat().st_uid == os.getuid()
    # Our own files show up as the guest's root.
    err, attr = c.call(w.GETATTR, new_node, bytes(16))
    uid = w.ATTR.unpack_from(attr, w.ATTR_HEAD.size)[11]
    assert (err, uid) == (0, 0)


def test_read_only_refuses_every_write(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    c = Client(tmp_path, read_only=True)
    _, node = c.lookup(1, b"f")
    assert c.call(w.OPEN, node, struct.pack("<II", os.O_RDWR, 0))[0] == -errno.EROFS
    assert c.call(w.UNLINK, 1, b"f\0")[0] == -errno.EROFS
    assert c.call(w.MKDIR, 1, struct.pack("<II", 0o755, 0) + b"d\0")[0] == -errno.EROFS
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_readdir_lists_names_with_offsets(tmp_path: Path) -> None:
    for name in ("a", "b b", "ü"):
        (tmp_path / name).write_text("")
    c = Client(tmp_path)
    err, body = c.call(w.OPENDIR, 1, struct.pack("<II", 0, 0))
    fh = struct.unpack_from("<Q", body)[0]
    names, offset = [], 0
    while True:
        err, out = c.call(w.READDIR, 1, w.RW_IN.pack(fh, offset, 48, 0, 0, 0, 0))
        assert err == 0
        if not out:
            break
        pos = 0
        while pos < len(out):
            _ino, offset, namelen, _kind = w.DIRENT.unpack_from(out, pos)
            names.append(out[pos + 24 : pos + 24 + namelen].decode())
            pos += (24 + namelen + 7) & ~7
    assert sorted(names) == [".", "..", "a", "b b", "ü"]


@pytest.mark.parametrize("op", [w.FORGET, w.INTERRUPT])
def test_requests_without_replies(tmp_path: Path, op: int) -> None:
    c = Client(tmp_path)
    req = w.IN_HEADER.pack(w.IN_HEADER.size + 8, op, 99, 1, 0, 0, 1, 0, 0) + bytes(8)
    assert c.fs.feed(req) == (b"", len(req))
