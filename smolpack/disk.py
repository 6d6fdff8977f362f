"""Create stage, root tree → base disk: build the read-only ext4 base image.

Implements formats/image-inputs.md, "Base disk". `build_ext4` adds the extra
files (the guest agent...) to the tree, sizes the file system from the tree and
runs `mkfs.ext4 -d` into a temp file that is renamed into place only when done.

Choices, and why:
- No journal (`-O ^has_journal`): the base image is never written after the
  build; every run writes to its own throw-away overlay, so crash recovery buys
  nothing while the journal costs 16-64 MiB and doubles metadata writes.
- 4 KiB blocks, 256-byte inodes, `-T default`: mke2fs would otherwise pick the
  "small" profile (1 KiB blocks) below 512 MiB and change layout with size.
- `-m 0`: nothing needs a root-reserved 5 % inside a single-purpose VM.
- Reproducible: the UUID and directory hash seed derive from a digest of the
  tree listing; E2FSPROGS_FAKE_TIME pins superblock times; mke2fs copies each
  file's ctime/atime from the host (unsettable there), so a debugfs pass sets
  them to the same epoch. Epoch = SOURCE_DATE_EPOCH, else 1 (e2fsprogs
  treats E2FSPROGS_FAKE_TIME=0 as unset).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import types
import uuid
from collections.abc import Mapping
from pathlib import Path

from smolpack.errors import HostError, ImageError
from smolpack.image._tree_writer import EntryMeta, EntryProblem, TreeWriter, split_name

MIB = 1 << 20
_BLOCK = 4096
_INODE_SIZE = 256
_BYTES_PER_INODE = 16384  # mke2fs "default" ratio, applied to the free space too
_FAST_SYMLINK_MAX = 59  # shorter targets live inside the inode (no data block)
_MIN_E2FSPROGS = (1, 43)  # first release with `mkfs.ext4 -d`
_SBIN_PATH = "/usr/sbin:/sbin"
_NO_EXTRAS: Mapping[str, tuple[Path, int]] = types.MappingProxyType({})


def _tool(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH
    found = shutil.which(name, path=path)
    if found is None:
        raise HostError(
            f"{name} not found", hint="install e2fsprogs >= 1.43 (apt-get install e2fsprogs)"
        )
    return found


def find_mkfs() -> str:
    """Path of a `mkfs.ext4` that supports `-d`; HostError otherwise."""
    mkfs = _tool("mkfs.ext4")
    res = subprocess.run([mkfs, "-V"], capture_output=True, text=True, check=False)
    m = re.search(r"mke2fs (\d+)\.(\d+)", res.stdout + res.stderr)
    if m is None or (int(m.group(1)), int(m.group(2))) < _MIN_E2FSPROGS:
        found = m.group(0) if m else "an unknown version"
        raise HostError(
            f"{mkfs} is {found}; `-d` needs e2fsprogs >= 1.43",
            hint="install a newer e2fsprogs (apt-get install e2fsprogs)",
        )
    return mkfs


def source_epoch() -> int:
    """Timestamp for everything the tree does not fix: SOURCE_DATE_EPOCH, else 1.

    Not 0: e2fsprogs reads E2FSPROGS_FAKE_TIME=0 as "unset" and uses the clock.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH", "1")
    if not value.isdigit():
        raise ImageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {value!r}")
    return max(1, int(value))


def _add_extras(tree: Path, extras: Mapping[str, tuple[Path, int]], epoch: int) -> None:
    writer = TreeWriter(tree, own_root=False)
    try:
        for guest, (host, mode) in extras.items():
            parts = split_name(guest)
            # Keep the mtimes of directories that were already there.
            kept = {}
            for i in range(len(parts)):
                p = tree.joinpath(*parts[:i])
                if p.is_dir() and not p.is_symlink():
                    kept[p] = p.lstat().st_mtime_ns
            try:
                fobj = host.open("rb")
            except OSError as err:
                raise ImageError(f"extra file {host} for {guest}: {err.strerror}") from None
            with fobj:
                chunks = iter(functools.partial(fobj.read, MIB), b"")
                meta = EntryMeta(mode=mode, uid=0, gid=0, mtime_ns=epoch * 1_000_000_000)
                try:
                    writer.add_file(parts, meta, chunks)
                except EntryProblem as err:
                    raise ImageError(f"{tree}: cannot add {guest}: {err}") from None
            writer.finish()
            for p, mtime_ns in kept.items():
                os.utime(p, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    finally:
        writer.close()


def _measure(tree: Path) -> tuple[int, int, str]:
    """(data bytes rounded to blocks, inode count, digest of the tree listing)."""
    seen: set[tuple[int, int]] = set()
    blocks = 0
    inodes = 1
    listing = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, tree)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            listing.update(
                f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{size}\0"
                f"{st.st_mtime_ns}\0{target}\n".encode("utf-8", "surrogateescape")
            )
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISLNK(st.st_mode):
                blocks += len(target.encode("utf-8", "surrogateescape")) > _FAST_SYMLINK_MAX
            elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                blocks += max(1, math.ceil(st.st_size / _BLOCK))
    return blocks * _BLOCK, inodes, listing.hexdigest()


def plan_size(data_bytes: int, inodes: int, headroom_mib: int) -> tuple[int, int]:
    """(image size in MiB, inode count): content × 1.2 + headroom, plus inode tables."""
    free = headroom_mib * MIB
    inode_count = math.ceil(inodes * 1.2) + free // _BYTES_PER_INODE + 64
    # 2 % + 4 MiB covers bitmaps, group descriptors and resize reservations.
    raw = data_bytes * 1.2 + free + inode_count * _INODE_SIZE
    return math.ceil((raw * 1.02 + 4 * MIB) / MIB), inode_count


def build_ext4(
    tree: Path,
    out: Path,
    *,
    extra_files: Mapping[str, tuple[Path, int]] = _NO_EXTRAS,
    headroom_mib: int = 64,
) -> None:
    """Make `out` an ext4 image holding `tree` plus `extra_files` (guest path → host file, mode).

    The extra files are written into `tree` (a staging tree the caller owns).
    `out` appears only complete: on any failure no file is left at `out`.
    """
    mkfs = find_mkfs()
    debugfs = _tool("debugfs")
    dumpe2fs = _tool("dumpe2fs")
    epoch = source_epoch()
    if not tree.is_dir():
        raise ImageError(f"root tree {tree} is not a directory")
    _add_extras(tree, extra_files, epoch)
    data_bytes, inodes, listing = _measure(tree)
    size_mib, inode_count = plan_size(data_bytes, inodes, headroom_mib)
    fs_uuid = str(uuid.UUID(bytes=bytes.fromhex(listing)[:16], version=4))

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.ftruncate(fd, size_mib * MIB)
        os.close(fd)
        fd = -1
        env = {
            **os.environ,
            "LC_ALL": "C",
            "E2FSPROGS_FAKE_TIME": str(epoch),
            "SOURCE_DATE_EPOCH": str(epoch),
        }
        # fmt: off
        cmd = [
            mkfs, "-q", "-F", "-t", "ext4", "-T", "default", "-b", str(_BLOCK),
            "-I", str(_INODE_SIZE), "-N", str(inode_count), "-m", "0",
            "-O", "^has_journal", "-U", fs_uuid,
            "-E", f"root_owner=0:0,hash_seed={fs_uuid}", "-d", str(tree), str(tmp),
        ]
        # fmt: on
        _run(cmd, env, what=f"mkfs.ext4 for {out}")
        root_mtime = tree.lstat().st_mtime_ns // 1_000_000_000
        _pin_inode_times(debugfs, dumpe2fs, tmp, epoch, root_mtime, env)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp made it 0600; the base image is shared read-only
        os.replace(tmp, out)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _run(cmd: list[str], env: Mapping[str, str], *, what: str) -> str:
    res = subprocess.run(
        cmd, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {res.returncode}"
        raise ImageError(f"{what} failed: {detail}")
    return res.stdout


def _used_inodes(dumpe2fs: str, image: Path, env: Mapping[str, str]) -> list[int]:
    text = _run([dumpe2fs, str(image)], env, what="dumpe2fs")
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    first = int(re.search(r"^First inode:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    used: list[int] = [2]  # the root directory
    for g, free_text in enumerate(re.findall(r"^\s+Free inodes: ?(.*)$", text, re.M)):
        free: set[int] = set()
        for item in filter(None, (s.strip() for s in free_text.split(","))):
            lo, _, hi = item.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
        base = g * per_group
        used += [i for i in range(max(base + 1, first), base + per_group + 1) if i not in free]
    return used


def _pin_inode_times(
    debugfs: str, dumpe2fs: str, image: Path, epoch: int, root_mtime: int, env: Mapping[str, str]
) -> None:
    """Make every inode time reproducible.

    mke2fs 1.47.0 copies ctime/atime from the host files (ctime cannot be set
    there), stamps crtime and the root directory with the wall clock, and
    ignores E2FSPROGS_FAKE_TIME for those. All of them become `epoch`, except
    the root's mtime, which is the tree root's.
    """
    lines = [f"sif <2> mtime @{root_mtime}\n", f"sif <11> mtime @{epoch}\n"]
    for ino in _used_inodes(dumpe2fs, image, env):
        lines += [f"sif <{ino}> {field} @{epoch}\n" for field in ("ctime", "atime", "crtime")]
    script = "".join(lines)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        f.write(script)
        f.flush()
        res = subprocess.run(
            [debugfs, "-w", "-f", f.name, str(image)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    # debugfs exits 0 even when a command fails; anything past its banner is an error.
    errors = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if res.returncode != 0 or errors:
        detail = errors[-1] if errors else f"exit status {res.returncode}"
        raise ImageError(f"debugfs failed fixing inode times in {image}: {detail}")
