"""Create stage, image → root tree: write entries into the merged tree safely.

Implements formats/image-inputs.md, "Extraction rules". Every entry is created
relative to an open directory descriptor reached by walking the path one
component at a time with O_NOFOLLOW, so a symlink in the tree (which may point
anywhere on the host, e.g. `lib -> /usr/lib`) is never followed while writing.
Overlay semantics (whiteouts, opaque directories) live here too because they
need the same fd-relative walk.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EntryProblem(Exception):
    """One entry cannot be written; the caller names the archive and member."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryMeta:
    # permission bits including setuid/setgid/sticky (mode & 0o7777)
    mode: int
    # owner in the guest; kept only when we run as root
    uid: int
    # group in the guest; kept only when we run as root
    gid: int
    # modification time in nanoseconds since the epoch (atime is set to the same)
    mtime_ns: int


# Metadata for directories an archive implies but does not list (mtime 0 keeps
# the tree reproducible).
_IMPLICIT_DIR = EntryMeta(mode=0o755, uid=0, gid=0, mtime_ns=0)


def split_name(name: str) -> tuple[str, ...]:
    """Split an archive member name into components under the root.

    Leading `/` and `.` components are dropped (absolute names are rooted at
    the tree, as GNU tar does); a `..` component anywhere is refused because
    it has no meaning that keeps the entry inside the tree.
    """
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise EntryProblem("path escapes the root ('..' component)")
    return parts


class TreeWriter:
    """Writes one merged root tree; `finish()` applies directory metadata last."""

    def __init__(self, root: Path, *, own_root: bool = True) -> None:
        """`own_root=False` leaves the root directory's metadata as it is (adding files)."""
        self._root_fd = os.open(root, _DIR_OPEN)
        # Directory metadata is applied at the end: adding children changes a
        # directory's mtime, and a 0o555 directory must stay writable meanwhile.
        # The root and parents an archive leaves out get _IMPLICIT_DIR, as tar does.
        self._dirs: dict[tuple[str, ...], EntryMeta] = {(): _IMPLICIT_DIR} if own_root else {}
        # Entries written by the current layer, which that layer's own
        # whiteouts must not remove (OCI image spec, "Whiteouts").
        self._layer_paths: set[tuple[str, ...]] = set()
        self._layer_dirs: set[tuple[str, ...]] = set()
        self.keep_owner = os.geteuid() == 0
        # Counters for the caller's summary line.
        self.files = 0
        self.bytes = 0
        self.xattr_failures = 0
        # Device nodes, FIFOs and sockets left out (formats/image-inputs.md): one warning.
        self.skipped_special = 0

    def close(self) -> None:
        os.close(self._root_fd)

    def begin_layer(self) -> None:
        self._layer_paths.clear()
        self._layer_dirs.clear()

    # -- walking -----------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """Open the directory at `parts` without following any symlink."""
        fd = os.dup(self._root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = os.open(comp, _DIR_OPEN, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise EntryProblem(f"'{'/'.join(parts[: i + 1])}' does not exist") from None
                    # Archives may omit parent entries; tar creates them 0755.
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    self._dirs.setdefault(parts[: i + 1], _IMPLICIT_DIR)
                    nfd = os.open(comp, _DIR_OPEN, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    st = os.lstat(comp, dir_fd=fd)
                    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise EntryProblem(f"parent '{where}' is {kind}") from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _mark(self, parts: tuple[str, ...]) -> None:
        self._layer_paths.add(parts)
        for i in range(len(parts)):
            self._layer_dirs.add(parts[:i])

    def _clear(self, pfd: int, parts: tuple[str, ...], *, keep_dir: bool) -> None:
        """Remove whatever is at `parts` so a new entry can take its place."""
        try:
            st = os.lstat(parts[-1], dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(parts[-1], dir_fd=pfd)
            self._forget_dirs(parts)
        else:
            os.unlink(parts[-1], dir_fd=pfd)

    def _forget_dirs(self, parts: tuple[str, ...]) -> None:
        n = len(parts)
        for key in [k for k in self._dirs if k[:n] == parts]:
            del self._dirs[key]

    def _set_meta(self, name: str, pfd: int, meta: EntryMeta, *, symlink: bool = False) -> None:
        if self.keep_owner:
            os.chown(name, meta.uid, meta.gid, dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            # After chown: chown clears setuid/setgid bits.
            os.chmod(name, meta.mode & 0o7777, dir_fd=pfd)
        ns = (meta.mtime_ns, meta.mtime_ns)
        os.utime(name, ns=ns, dir_fd=pfd, follow_symlinks=False)

    # -- entries -----------------------------------------------------------------

    def add_dir(self, parts: tuple[str, ...], meta: EntryMeta) -> None:
        if parts:
            pfd = self._open_dir(parts[:-1], create=True)
            try:
                self._clear(pfd, parts, keep_dir=True)
                try:
                    os.mkdir(parts[-1], 0o700, dir_fd=pfd)
                except FileExistsError:
                    pass
            finally:
                os.close(pfd)
        self._dirs[parts] = meta
        self._mark(parts)

    def add_file(
        self,
        parts: tuple[str, ...],
        meta: EntryMeta,
        chunks: Iterator[bytes],
        *,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        if not parts:
            raise EntryProblem("a regular file cannot replace the root directory")
        pfd = self._open_dir(parts[:-1], create=True)
        try:
            self._clear(pfd, parts, keep_dir=False)
            # O_EXCL|O_NOFOLLOW: never write through an existing link.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, 0o600, dir_fd=pfd)
            try:
                for chunk in chunks:
                    self.bytes += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                if self.keep_owner:
                    os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode & 0o7777)
                for key, value in (xattrs or {}).items():
                    try:
                        os.setxattr(fd, key, value)
                    except OSError:
                        self.xattr_failures += 1
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)
        finally:
            os.close(pfd)
        self.files += 1
        self._mark(parts)

    def add_symlink(self, parts: tuple[str, ...], meta: EntryMeta, target: str) -> None:
        # The target is interpreted inside the guest; it is stored, never followed.
        if not parts:
            raise EntryProblem("a symlink cannot replace the root directory")
        pfd = self._open_dir(parts[:-1], create=True)
        try:
            self._clear(pfd, parts, keep_dir=False)
            os.symlink(target, parts[-1], dir_fd=pfd)
            self._set_meta(parts[-1], pfd, meta, symlink=True)
        finally:
            os.close(pfd)
        self._mark(parts)

    def add_hardlink(self, parts: tuple[str, ...], target: tuple[str, ...]) -> None:
        if not parts or not target:
            raise EntryProblem("hard link to or from the root directory")
        if parts == target:
            return
        try:
            tfd = self._open_dir(target[:-1], create=False)
        except EntryProblem as err:
            raise EntryProblem(f"hard link target '{'/'.join(target)}': {err}") from None
        try:
            try:
                st = os.lstat(target[-1], dir_fd=tfd)
            except FileNotFoundError:
                raise EntryProblem(
                    f"hard link target '{'/'.join(target)}' is not extracted yet"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise EntryProblem(f"hard link target '{'/'.join(target)}' is a directory")
            pfd = self._open_dir(parts[:-1], create=True)
            try:
                self._clear(pfd, parts, keep_dir=False)
                os.link(
                    target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False
                )
            finally:
                os.close(pfd)
        finally:
            os.close(tfd)
        self._mark(parts)

    # -- overlay semantics -------------------------------------------------------

    def whiteout(self, parts: tuple[str, ...]) -> None:
        """`.wh.<name>`: delete `parts` as it came from lower layers."""
        try:
            pfd = self._open_dir(parts[:-1], create=False)
        except EntryProblem:
            return  # nothing below to hide
        try:
            self._remove_lower(pfd, parts)
        finally:
            os.close(pfd)

    def opaque(self, parts: tuple[str, ...]) -> None:
        """`.wh..wh..opq`: hide every lower-layer child of directory `parts`."""
        dfd = self._open_dir(parts, create=True)
        try:
            for name in os.listdir(dfd):
                self._remove_lower(dfd, (*parts, name))
        finally:
            os.close(dfd)
        self._mark(parts)

    def _remove_lower(self, pfd: int, parts: tuple[str, ...]) -> None:
        if parts in self._layer_paths and parts not in self._layer_dirs:
            return  # written by this very layer: a whiteout only hides lower layers
        try:
            st = os.lstat(parts[-1], dir_fd=pfd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(parts[-1], dir_fd=pfd)
        elif parts in self._layer_dirs:
            dfd = os.open(parts[-1], _DIR_OPEN, dir_fd=pfd)
            try:
                for name in os.listdir(dfd):
                    self._remove_lower(dfd, (*parts, name))
            finally:
                os.close(dfd)
        else:
            shutil.rmtree(parts[-1], dir_fd=pfd)
            self._forget_dirs(parts)

    # -- end ---------------------------------------------------------------------

    def finish(self) -> None:
        """Apply directory modes, owners and mtimes, deepest first."""
        for parts in sorted(self._dirs, key=len, reverse=True):
            meta = self._dirs[parts]
            try:
                fd = self._open_dir(parts, create=False)
            except EntryProblem:
                continue
            try:
                if self.keep_owner:
                    os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode & 0o7777)
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)
