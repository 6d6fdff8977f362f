"""The confined node table: every host file the guest kernel holds, as an O_PATH fd.

Confinement: every node is an O_PATH fd reached one name at a time from the shared root
with O_NOFOLLOW (`.`/`..`/`/` in names refused), and files are reopened through
/proc/self/fd (`proc_path`), never by path. So a symlink inside (its target is resolved by
the guest, in the guest), `..`, or an absolute host path never reaches a host file outside
the root.

Stdlib only: the launcher imports it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from smolpack.hostdir.fuse_wire import FUSE_ROOT_ID, FuseError


@dataclass(slots=True)
class Node:
    fd: int  # O_PATH|O_NOFOLLOW
    lookups: int  # the kernel's reference count (FORGET lowers it)
    key: tuple[int, int]  # (st_dev, st_ino)


def proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def check_name(raw: bytes) -> str:
    """One name of a directory (NUL-terminated on the wire), never a path."""
    name = raw.split(b"\0", 1)[0]
    if not name or name in (b".", b"..") or b"/" in name:
        raise FuseError(errno.EINVAL)
    return os.fsdecode(name)


class NodeTable:
    """The nodes the guest kernel knows, by nodeid; one per host inode."""

    def __init__(self, root: str) -> None:
        _raise_fd_limit()
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._nodes: dict[int, Node] = {FUSE_ROOT_ID: Node(fd, 1, (st.st_dev, st.st_ino))}
        self._by_key: dict[tuple[int, int], int] = {(st.st_dev, st.st_ino): FUSE_ROOT_ID}
        self._next = FUSE_ROOT_ID + 1

    @property
    def root(self) -> Node:
        return self._nodes[FUSE_ROOT_ID]

    def get(self, nodeid: int) -> Node:
        node = self._nodes.get(nodeid)
        if node is None:
            raise FuseError(errno.ESTALE)
        return node

    def lookup(self, parent: Node, name: str) -> tuple[int, os.stat_result]:
        """The nodeid of `name` in `parent` (counted as one more lookup), and its stat."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        nodeid = self._by_key.get(key)
        if nodeid is not None:
            os.close(fd)
            self._nodes[nodeid].lookups += 1
        else:
            nodeid = self._next
            self._next += 1
            self._nodes[nodeid] = Node(fd, 1, key)
            self._by_key[key] = nodeid
        return nodeid, st

    def forget(self, nodeid: int, count: int) -> None:
        node = self._nodes.get(nodeid)
        if node is None or nodeid == FUSE_ROOT_ID:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[nodeid]
            self._by_key.pop(node.key, None)
            os.close(node.fd)

    def close(self) -> None:
        for node in self._nodes.values():
            os.close(node.fd)
        self._nodes.clear()


def readlink_empty(fd: int) -> bytes:
    """The target of the O_PATH symlink `fd` itself: readlinkat(fd, ""). Python has no
    AT_EMPTY_PATH, and the magic link's target is no help: use the libc call."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(4096)
    n = libc.readlinkat(fd, b"", buf, 4096)
    if n < 0:
        raise FuseError(ctypes.get_errno())
    return buf.raw[:n]


def _raise_fd_limit() -> None:
    """One O_PATH fd per inode the guest kernel holds (until it FORGETs them): a walk over
    10,000 files needs more than the usual soft limit of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))
