"""A host directory served to the guest kernel's FUSE client (run stage; issue 12).

The guest agent mounts FUSE at the guest path (MOUNT, formats/agent-protocol.md 5.8) and
relays the kernel's requests over a channel; `HostDir.feed` answers them here, on the
host, as the invoking user, so files the guest creates belong to that user. The wire format
is the kernel's own (`fuse_wire`); one handler per opcode below.

Confinement is `node_table`'s: every node an O_PATH fd reached one name at a time from the
shared root, files reopened through their node's fd (/proc/self/fd), never by path.
Memory is bounded: one request at a time, at most 128 KiB of data each.

Stdlib only: the launcher imports it.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from smolpack.hostdir import fuse_wire as w
from smolpack.hostdir.fuse_wire import FuseError
from smolpack.hostdir.node_table import Node, NodeTable, check_name, proc_path, readlink_empty

MAX_WRITE = 128 * 1024  # negotiated in INIT; the agent's read buffer is 256 KiB
TTL_S = 1  # how long the guest may cache names and attributes (others may share the dir)

# Opcodes a read-only mount refuses (`open` refuses write flags itself).
_WRITES = (
    w.SETATTR, w.SYMLINK, w.MKNOD, w.MKDIR, w.UNLINK, w.RMDIR, w.RENAME, w.LINK, w.CREATE,
    w.RENAME2, w.WRITE,
)  # fmt: skip


class HostDir:
    """One shared directory: feed it request bytes, get reply bytes back."""

    def __init__(self, root: str, *, read_only: bool) -> None:
        self.read_only = read_only
        self._nodes = NodeTable(root)
        self._files: dict[int, int] = {}  # fh -> fd of an open file
        self._dirs: dict[int, list[tuple[bytes, int, int]]] = {}  # fh -> (name, ino, type)
        self._next_fh = 1
        self._buf = bytearray()
        self._uid = os.getuid()

    @property
    def pending(self) -> bool:
        """Whether a complete request waits for `feed` (held back by `max_out`)."""
        if len(self._buf) < w.IN_HEADER.size:
            return False
        length: int = struct.unpack_from("<I", self._buf)[0]
        return len(self._buf) >= length

    def close(self) -> None:
        self._nodes.close()
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def feed(self, data: bytes, max_out: int = 1 << 62) -> tuple[bytes, int]:
        """Take request bytes; return (replies, bytes of requests fully handled).

        Stops once `max_out` bytes of replies are made; the rest waits in the buffer for
        the next call (`feed(b"")`), so replies never pile up beyond what the caller can send.
        """
        self._buf += data
        out = bytearray()
        done = 0
        while len(self._buf) >= w.IN_HEADER.size and len(out) < max_out:
            length = struct.unpack_from("<I", self._buf)[0]
            if length < w.IN_HEADER.size or len(self._buf) < length:
                break
            req = bytes(self._buf[:length])
            del self._buf[:length]
            done += length
            out += self._handle(req)
        return bytes(out), done

    # -- dispatch -------------------------------------------------------------------------

    def _handle(self, req: bytes) -> bytes:
        _len, op, unique, nodeid, _uid, _gid, _pid, _ext, _ = w.IN_HEADER.unpack_from(req)
        body = req[w.IN_HEADER.size :]
        if op in w.NO_REPLY:
            if op == w.FORGET:
                self._nodes.forget(nodeid, struct.unpack_from("<Q", body)[0])
            elif op == w.BATCH_FORGET:
                (count,) = struct.unpack_from("<I", body)
                for i in range(count):
                    self._nodes.forget(*struct.unpack_from("<QQ", body, 8 + 16 * i))
            return b""
        try:
            if self.read_only and op in _WRITES:
                raise FuseError(errno.EROFS)
            handler = _HANDLERS.get(op)
            if handler is None:
                raise FuseError(errno.ENOSYS)
            reply = handler(self, nodeid, body)
            error = 0
        except FuseError as err:
            reply, error = b"", -err.code
        except OSError as err:
            reply, error = b"", -(err.errno or errno.EIO)
        return w.reply(unique, error, reply)

    # -- replies and file handles ---------------------------------------------------------

    def _attr(self, st: os.stat_result) -> bytes:
        owner = 0 if st.st_uid == self._uid else 65534  # the guest's root is the invoking user
        return w.attr(st, owner)

    def _entry(self, parent: Node, name: str) -> bytes:
        nodeid, st = self._nodes.lookup(parent, name)
        return w.entry_out(nodeid, TTL_S, self._attr(st))

    def _attr_reply(self, st: os.stat_result) -> bytes:
        return w.attr_out(TTL_S, self._attr(st))

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- requests (one method per opcode) -------------------------------------------------

    def init(self, _nodeid: int, body: bytes) -> bytes:
        major, minor, readahead, flags = struct.unpack_from("<IIII", body)
        if major != 7:
            raise FuseError(errno.EPROTO)
        want = w.FUSE_ASYNC_READ | w.FUSE_BIG_WRITES | w.FUSE_MAX_PAGES
        return w.init_out(min(minor, 31), readahead, flags & want, MAX_WRITE)

    def destroy(self, _nodeid: int, _body: bytes) -> bytes:
        return b""

    def lookup(self, nodeid: int, body: bytes) -> bytes:
        return self._entry(self._nodes.get(nodeid), check_name(body))

    def getattr(self, nodeid: int, _body: bytes) -> bytes:
        return self._attr_reply(os.fstat(self._nodes.get(nodeid).fd))

    def setattr(self, nodeid: int, body: bytes) -> bytes:
        node = self._nodes.get(nodeid)
        f = w.SETATTR_IN.unpack_from(body)
        valid, fh, size, atime, mtime = f[0], f[2], f[3], f[5], f[6]
        atime_ns, mtime_ns, mode, uid, gid = f[8], f[9], f[11], f[13], f[14]
        if stat.S_ISLNK(os.fstat(node.fd).st_mode):
            raise FuseError(errno.EPERM)
        if valid & (w.FATTR_UID | w.FATTR_GID) and (uid, gid) != (0, 0):
            raise FuseError(errno.EPERM)  # everything here belongs to the invoking user
        if valid & w.FATTR_MODE:
            os.chmod(proc_path(node.fd), stat.S_IMODE(mode))
        if valid & w.FATTR_SIZE:
            if valid & w.FATTR_FH and fh in self._files:
                os.ftruncate(self._files[fh], size)
            else:
                os.truncate(proc_path(node.fd), size)
        if valid & (w.FATTR_ATIME | w.FATTR_MTIME):
            st = os.fstat(node.fd)
            now = None
            a = st.st_atime_ns if not valid & w.FATTR_ATIME else atime * 10**9 + atime_ns
            m = st.st_mtime_ns if not valid & w.FATTR_MTIME else mtime * 10**9 + mtime_ns
            if valid & (w.FATTR_ATIME_NOW | w.FATTR_MTIME_NOW):
                import time

                now = time.time_ns()
                a = now if valid & w.FATTR_ATIME_NOW else a
                m = now if valid & w.FATTR_MTIME_NOW else m
            os.utime(proc_path(node.fd), ns=(a, m))
        return self._attr_reply(os.fstat(node.fd))

    def readlink(self, nodeid: int, _body: bytes) -> bytes:
        node = self._nodes.get(nodeid)
        if not stat.S_ISLNK(os.fstat(node.fd).st_mode):
            raise FuseError(errno.EINVAL)
        return readlink_empty(node.fd)

    def symlink(self, nodeid: int, body: bytes) -> bytes:
        name_raw, _, target = body.partition(b"\0")
        parent = self._nodes.get(nodeid)
        name = check_name(name_raw)
        os.symlink(target.split(b"\0", 1)[0], name, dir_fd=parent.fd)
        return self._entry(parent, name)

    def mkdir(self, nodeid: int, body: bytes) -> bytes:
        mode, umask = struct.unpack_from("<II", body)
        parent = self._nodes.get(nodeid)
        name = check_name(body[8:])
        os.mkdir(name, mode & ~umask & 0o7777, dir_fd=parent.fd)
        return self._entry(parent, name)

    def unlink(self, nodeid: int, body: bytes) -> bytes:
        os.unlink(check_name(body), dir_fd=self._nodes.get(nodeid).fd)
        return b""

    def rmdir(self, nodeid: int, body: bytes) -> bytes:
        os.rmdir(check_name(body), dir_fd=self._nodes.get(nodeid).fd)
        return b""

    def rename(self, nodeid: int, body: bytes) -> bytes:
        (newdir,) = struct.unpack_from("<Q", body)
        return self._rename(nodeid, newdir, body[8:])

    def rename2(self, nodeid: int, body: bytes) -> bytes:
        newdir, flags = struct.unpack_from("<QI", body)
        if flags:
            raise FuseError(errno.EINVAL)  # RENAME_NOREPLACE/EXCHANGE: callers fall back
        return self._rename(nodeid, newdir, body[16:])

    def _rename(self, nodeid: int, newdir: int, names: bytes) -> bytes:
        old, _, new = names.partition(b"\0")
        os.rename(
            check_name(old), check_name(new),
            src_dir_fd=self._nodes.get(nodeid).fd, dst_dir_fd=self._nodes.get(newdir).fd,
        )  # fmt: skip
        return b""

    def open(self, nodeid: int, body: bytes) -> bytes:
        (flags,) = struct.unpack_from("<I", body)
        node = self._nodes.get(nodeid)
        if stat.S_ISLNK(os.fstat(node.fd).st_mode):
            raise FuseError(errno.ELOOP)
        if self.read_only and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise FuseError(errno.EROFS)
        keep = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC
        # Through the node's own fd (the magic link), so never by a path that could move.
        fd = os.open(proc_path(node.fd), (flags & keep) | os.O_CLOEXEC)
        fh = self._new_fh()
        self._files[fh] = fd
        return w.open_out(fh)

    def create(self, nodeid: int, body: bytes) -> bytes:
        flags, mode, umask, _ = struct.unpack_from("<IIII", body)
        parent = self._nodes.get(nodeid)
        name = check_name(body[16:])
        keep = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_EXCL
        fd = os.open(
            name, (flags & keep) | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode & ~umask & 0o7777, dir_fd=parent.fd,
        )  # fmt: skip
        try:
            entry = self._entry(parent, name)
        except BaseException:
            os.close(fd)
            raise
        fh = self._new_fh()
        self._files[fh] = fd
        return entry + w.open_out(fh)

    def read(self, _nodeid: int, body: bytes) -> bytes:
        fh, offset, size = w.RW_IN.unpack_from(body)[:3]
        return os.pread(self._file(fh), min(size, MAX_WRITE), offset)

    def write(self, _nodeid: int, body: bytes) -> bytes:
        fh, offset, size = w.RW_IN.unpack_from(body)[:3]
        data = body[w.RW_IN.size : w.RW_IN.size + size]
        return w.write_out(os.pwrite(self._file(fh), data, offset))

    def _file(self, fh: int) -> int:
        fd = self._files.get(fh)
        if fd is None:
            raise FuseError(errno.EBADF)
        return fd

    def release(self, _nodeid: int, body: bytes) -> bytes:
        fd = self._files.pop(struct.unpack_from("<Q", body)[0], None)
        if fd is not None:
            os.close(fd)
        return b""

    def flush(self, _nodeid: int, _body: bytes) -> bytes:
        return b""

    def fsync(self, _nodeid: int, body: bytes) -> bytes:
        os.fsync(self._file(struct.unpack_from("<Q", body)[0]))
        return b""

    def opendir(self, nodeid: int, _body: bytes) -> bytes:
        node = self._nodes.get(nodeid)
        fd = os.open(proc_path(node.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            entries = [(b".", 1, 4), (b"..", 1, 4)]
            with os.scandir(fd) as it:
                for e in it:
                    kind = 4 if e.is_dir(follow_symlinks=False) else (
                        10 if e.is_symlink() else 8
                    )  # fmt: skip
                    entries.append((os.fsencode(e.name), e.inode(), kind))
        finally:
            os.close(fd)
        fh = self._new_fh()
        self._dirs[fh] = entries
        return w.open_out(fh)

    def readdir(self, _nodeid: int, body: bytes) -> bytes:
        fh, offset, size = w.RW_IN.unpack_from(body)[:3]
        entries = self._dirs.get(fh)
        if entries is None:
            raise FuseError(errno.EBADF)
        out = bytearray()
        for index in range(offset, len(entries)):
            name, ino, kind = entries[index]
            rec = w.dirent(ino, index + 1, name, kind)
            if len(out) + len(rec) > size:
                break
            out += rec
        return bytes(out)

    def releasedir(self, _nodeid: int, body: bytes) -> bytes:
        self._dirs.pop(struct.unpack_from("<Q", body)[0], None)
        return b""

    def fsyncdir(self, _nodeid: int, _body: bytes) -> bytes:
        return b""

    def statfs(self, _nodeid: int, _body: bytes) -> bytes:
        v = os.statvfs(proc_path(self._nodes.root.fd))
        return w.statfs_out(v)

    def access(self, _nodeid: int, _body: bytes) -> bytes:
        return b""  # the host checks for real when the file is used


_HANDLERS = {
    w.INIT: HostDir.init, w.DESTROY: HostDir.destroy, w.LOOKUP: HostDir.lookup,
    w.GETATTR: HostDir.getattr, w.SETATTR: HostDir.setattr, w.READLINK: HostDir.readlink,
    w.SYMLINK: HostDir.symlink, w.MKDIR: HostDir.mkdir, w.UNLINK: HostDir.unlink,
    w.RMDIR: HostDir.rmdir, w.RENAME: HostDir.rename, w.RENAME2: HostDir.rename2,
    w.OPEN: HostDir.open, w.CREATE: HostDir.create, w.READ: HostDir.read,
    w.WRITE: HostDir.write, w.RELEASE: HostDir.release, w.FLUSH: HostDir.flush,
    w.FSYNC: HostDir.fsync, w.OPENDIR: HostDir.opendir, w.READDIR: HostDir.readdir,
    w.RELEASEDIR: HostDir.releasedir, w.FSYNCDIR: HostDir.fsyncdir, w.STATFS: HostDir.statfs,
    w.ACCESS: HostDir.access,
}  # fmt: skip
