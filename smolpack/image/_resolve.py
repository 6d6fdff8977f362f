"""Create stage, image → root tree: recognise the input and fill the tree.

Implements formats/image-inputs.md, "Accepted inputs" and "Detection". The one
public entry point is `prepare_rootfs`; everything else here decides which
reader runs (rootfs directory, rootfs tarball, OCI layout, oci-archive,
docker-archive) by looking at content (magic bytes, member names), not names.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from smolpack.errors import ImageError
from smolpack.image._config import ImageDefaults, check_platform
from smolpack.image._oci import (
    BlobSource,
    DirSource,
    ImagePlan,
    TarSource,
    apply_layers,
    plan_docker_archive,
    plan_oci,
)
from smolpack.image._tar_extract import (
    StrictTarInfo,
    extract_tar,
    open_decompressed,
    sniff_compression,
)
from smolpack.image._tree_writer import EntryMeta, EntryProblem, TreeWriter

log = logging.getLogger("smolpack.image")

_COPY_CHUNK = 1 << 20
# Host `uname -m` names and OCI names → the OCI (GOARCH) name.
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ImageKind(enum.Enum):
    ROOTFS_DIR = "rootfs directory"
    ROOTFS_TAR = "rootfs tarball"
    OCI_LAYOUT = "OCI image layout"
    OCI_ARCHIVE = "OCI archive"
    DOCKER_ARCHIVE = "docker-archive"


def goarch(arch: str) -> str:
    try:
        return _GOARCH[arch]
    except KeyError:
        raise ImageError(f"unsupported architecture {arch!r} (use x86_64 or aarch64)") from None


def _archive_kind(names: set[str]) -> ImageKind:
    if "manifest.json" in names:
        return ImageKind.DOCKER_ARCHIVE
    if "oci-layout" in names or "index.json" in names:
        return ImageKind.OCI_ARCHIVE
    return ImageKind.ROOTFS_TAR


def _top_names(path: Path) -> set[str]:
    """Top-level regular-file names of a (maybe compressed) tar; best effort."""
    names: set[str] = set()
    with path.open("rb") as raw:
        if sniff_compression(raw.read(512)) == "tar":
            raw.seek(0)
            try:
                with tarfile.open(fileobj=raw, mode="r:", tarinfo=StrictTarInfo) as tf:
                    members = tf.getmembers()
            except (tarfile.TarError, OSError):  # OSError: a forged size seeks past 2**63
                return names  # extraction reports the damage with its own message
            return {m.name.strip("/").removeprefix("./") for m in members if m.isreg()}
        raw.seek(0)
        try:
            stream = open_decompressed(raw, str(path))
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=StrictTarInfo) as tf:  # type: ignore[call-overload]
                for m in tf:
                    name = m.name.strip("/").removeprefix("./")
                    if m.isreg() and "/" not in name:
                        names.add(name)
        except Exception:  # noqa: BLE001 - a damaged stream is reported by the extractor
            pass
    return names


def detect_kind(path: Path) -> ImageKind:
    """What kind of image `path` is; ImageError when it is none of them."""
    if not os.path.lexists(path):
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        if (path / "oci-layout").exists() or (path / "index.json").exists():
            return ImageKind.OCI_LAYOUT
        return ImageKind.ROOTFS_DIR
    if not path.is_file():
        raise ImageError(f"{path}: not a directory or a regular file")
    with path.open("rb") as raw:
        if sniff_compression(raw.read(512)) is None:
            raise ImageError(f"{path}: not a tar archive (unknown format)")
    return _archive_kind(_top_names(path))


def prepare_rootfs(image_path: Path, dest_dir: Path, *, arch: str = "x86_64") -> ImageDefaults:
    """Fill `dest_dir` (absent or empty) with the image's merged root tree.

    Returns the image config's defaults (empty for rootfs inputs). On any error
    `dest_dir` is left as it was found (removed if this call created it).
    """
    want = goarch(arch)
    kind = detect_kind(image_path)
    return _into(dest_dir, lambda writer: _fill(kind, image_path, writer, want), str(image_path))


def prepare_rootfs_from_source(
    src: BlobSource, dest_dir: Path, *, arch: str = "x86_64"
) -> ImageDefaults:
    """`prepare_rootfs` for an image given as a BlobSource shaped like an OCI layout.

    Used for images pulled from a registry (`smolpack.registry`): same checks, same tree.
    """
    want = goarch(arch)
    return _into(dest_dir, lambda writer: _run_plan(src, plan_oci, writer, want), src.label)


def _into(dest_dir: Path, fill: Callable[[TreeWriter], ImageDefaults], label: str) -> ImageDefaults:
    created = not dest_dir.exists()
    if created:
        dest_dir.mkdir(parents=True)
    elif not dest_dir.is_dir() or any(dest_dir.iterdir()):
        raise ImageError(f"destination {dest_dir} exists and is not an empty directory")
    writer = TreeWriter(dest_dir)
    try:
        defaults = fill(writer)
        writer.finish()
    except BaseException:
        writer.close()
        _undo(dest_dir, created=created)
        raise
    writer.close()
    if not writer.keep_owner:
        log.warning("not running as root: file owners from %s are not kept", label)
    if writer.xattr_failures:
        log.warning("%d extended attributes could not be set", writer.xattr_failures)
    if writer.skipped_special:
        log.warning(
            "%s: skipped %d device nodes, FIFOs and sockets (the guest mounts its own /dev)",
            label,
            writer.skipped_special,
        )
    return defaults


def _undo(dest_dir: Path, *, created: bool) -> None:
    if created:
        shutil.rmtree(dest_dir, ignore_errors=True)
        return
    for child in dest_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _fill(kind: ImageKind, path: Path, writer: TreeWriter, want: str) -> ImageDefaults:
    label = str(path)
    if kind is ImageKind.ROOTFS_DIR:
        _copy_dir(path, writer, label)
        return ImageDefaults()
    if kind is ImageKind.ROOTFS_TAR:
        with path.open("rb") as raw:
            extract_tar(raw, writer, label=label, layer=False)
        return ImageDefaults()
    if kind is ImageKind.OCI_LAYOUT:
        return _run_plan(DirSource(path), plan_oci, writer, want)
    with tempfile.TemporaryDirectory(prefix="smolpack-image-") as tmp:
        tar_path = _plain_copy(path, Path(tmp))
        try:
            tf = tarfile.open(tar_path, mode="r:", tarinfo=StrictTarInfo)
        except tarfile.TarError as err:
            raise ImageError(f"{label}: corrupt tar ({err})") from None
        with tf:
            try:
                source = TarSource(tf, label)  # reads every header (StrictTarInfo checks)
            except (tarfile.TarError, OSError) as err:  # OSError: a seek past 2**63
                raise ImageError(f"{label}: corrupt tar ({err})") from None
            planner = plan_docker_archive if kind is ImageKind.DOCKER_ARCHIVE else plan_oci
            return _run_plan(source, planner, writer, want)


def _plain_copy(path: Path, tmp: Path) -> Path:
    """An uncompressed tar we can seek in: `path` itself, or a decompressed copy in `tmp`."""
    with path.open("rb") as raw:
        if sniff_compression(raw.read(512)) == "tar":
            return path
        raw.seek(0)
        stream = open_decompressed(raw, str(path))
        out = tmp / "image.tar"
        try:
            with out.open("wb") as dst:
                while chunk := stream.read(_COPY_CHUNK):
                    dst.write(chunk)
        except Exception as err:  # noqa: BLE001 - the stream's own failure text
            raise ImageError(f"{path}: {err}") from None
    return out


def _run_plan(src: BlobSource, planner: object, writer: TreeWriter, want: str) -> ImageDefaults:
    plan: ImagePlan = planner(src, want)  # type: ignore[operator]
    check_platform(plan.config, goarch=want, label=src.label)
    apply_layers(src, plan, writer)
    return ImageDefaults.from_config(plan.config, label=src.label)


# -- rootfs directory ---------------------------------------------------------------


def _stat_meta(st: os.stat_result) -> EntryMeta:
    return EntryMeta(
        mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns
    )


def _file_chunks(path: str) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while data := os.read(fd, _COPY_CHUNK):
            yield data
    finally:
        os.close(fd)


def _copy_dir(src: Path, writer: TreeWriter, label: str) -> None:
    """Copy a rootfs directory with the same rules as a tarball (no special files, links kept)."""
    links: dict[tuple[int, int], tuple[str, ...]] = {}
    writer.add_dir((), _stat_meta(os.lstat(src)))
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(src, *rel)) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            parts = (*rel, entry.name)
            try:
                _copy_entry(entry, parts, writer, links, stack)
            except EntryProblem as err:
                raise ImageError(f"{label}: entry '{'/'.join(parts)}': {err}") from None


def _copy_entry(
    entry: os.DirEntry[str],
    parts: tuple[str, ...],
    writer: TreeWriter,
    links: dict[tuple[int, int], tuple[str, ...]],
    stack: list[tuple[str, ...]],
) -> None:
    st = entry.stat(follow_symlinks=False)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        writer.add_dir(parts, _stat_meta(st))
        stack.append(parts)
        return
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        # Same rule as a tarball: /dev comes from the guest's devtmpfs, a socket is a live
        # endpoint of some host process, a FIFO is rarely more than a leftover.
        writer.skipped_special += 1
        return
    if st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), parts)
        if first != parts:
            writer.add_hardlink(parts, first)
            return
    if stat.S_ISLNK(mode):
        writer.add_symlink(parts, _stat_meta(st), os.readlink(entry.path))
    else:
        writer.add_file(parts, _stat_meta(st), _file_chunks(entry.path))
