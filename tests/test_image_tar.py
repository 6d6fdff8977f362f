"""Rootfs tarballs and directories → merged tree: round trip and every refusal."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import MTIME, E, gz, make_tar, zst

from smolpack.errors import ImageError
from smolpack.image import ImageDefaults, ImageKind, detect_kind, prepare_rootfs

ROOTFS = [
    E("./", kind="dir", mode=0o755, mtime=MTIME - 5),
    E("./bin", kind="dir", mode=0o755),
    E("./bin/su", data=b"#!su\n", mode=0o4755, uid=0, gid=0),
    E("./bin/tool", data=b"tool\n", mode=0o750, uid=1000, gid=1001, mtime=MTIME + 7),
    E("./bin/tool-again", kind="link", target="./bin/tool"),
    E("./tmp", kind="dir", mode=0o1777),
    E("./etc/passwd", data=b"root:x:0:0\n"),  # parent dir omitted, as some tars do
    E("./etc/mtab", kind="sym", target="/proc/self/mounts"),
    E("./run/fifo", kind="fifo", mode=0o600),
    E("./ro", kind="dir", mode=0o555),
    E("./ro/inside", data=b"x"),
]


def check_rootfs(dest: Path) -> None:
    su = (dest / "bin/su").lstat()
    assert stat.S_IMODE(su.st_mode) == 0o4755
    tool = (dest / "bin/tool").lstat()
    assert stat.S_IMODE(tool.st_mode) == 0o750
    assert (tool.st_uid, tool.st_gid) == (1000, 1001)
    assert tool.st_mtime_ns == (MTIME + 7) * 1_000_000_000
    assert (dest / "bin/tool-again").lstat().st_ino == tool.st_ino
    assert tool.st_nlink == 2
    assert stat.S_IMODE((dest / "tmp").lstat().st_mode) == 0o1777
    assert (dest / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert os.readlink(dest / "etc/mtab") == "/proc/self/mounts"
    assert not os.path.lexists(dest / "run/fifo")  # skipped, like device nodes
    assert stat.S_IMODE((dest / "ro").lstat().st_mode) == 0o555
    assert (dest / "ro").lstat().st_mtime_ns == MTIME * 1_000_000_000
    assert dest.lstat().st_mtime_ns == (MTIME - 5) * 1_000_000_000


@pytest.mark.parametrize(
    ("suffix", "pack"),
    [(".tar", lambda b: b), (".tar.gz", gz), (".tar.zst", zst), (".tar", gz), (".img", zst)],
    ids=["tar", "gzip", "zstd", "gzip-named-tar", "zstd-named-img"],
)
def test_rootfs_tarball_round_trips(tmp_path: Path, suffix: str, pack: object) -> None:
    src = tmp_path / f"rootfs{suffix}"
    src.write_bytes(pack(make_tar(ROOTFS)))  # type: ignore[operator]
    assert detect_kind(src) is ImageKind.ROOTFS_TAR
    assert prepare_rootfs(src, tmp_path / "out") == ImageDefaults()
    check_rootfs(tmp_path / "out")


def test_rootfs_directory_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "rootfs.tar"
    src.write_bytes(make_tar(ROOTFS))
    prepare_rootfs(src, tmp_path / "first")
    assert detect_kind(tmp_path / "first") is ImageKind.ROOTFS_DIR
    prepare_rootfs(tmp_path / "first", tmp_path / "copy")
    check_rootfs(tmp_path / "copy")


def test_symlinked_parent_in_a_source_dir_is_copied_as_a_link(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "usr/lib").mkdir(parents=True)
    (src / "usr/lib/libc.so").write_bytes(b"elf")
    (src / "lib").symlink_to("usr/lib")
    (src / "host").symlink_to("/etc")
    prepare_rootfs(src, tmp_path / "out")
    assert os.readlink(tmp_path / "out/lib") == "usr/lib"
    assert os.readlink(tmp_path / "out/host") == "/etc"
    assert (tmp_path / "out/usr/lib/libc.so").read_bytes() == b"elf"


def bad(tmp_path: Path, entries: list[E], pack: object = None) -> str:
    src = tmp_path / "bad.tar"
    data = make_tar(entries)
    src.write_bytes(pack(data) if pack else data)  # type: ignore[operator]
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed unpack leaves no tree behind"
    return str(exc.value).replace(str(src), "IMG")


def test_dotdot_member_is_refused(tmp_path: Path) -> None:
    msg = bad(tmp_path, [E("etc", kind="dir"), E("../etc/passwd", data=b"pwned")])
    assert msg == "IMG: member '../etc/passwd': path escapes the root ('..' component)"


def test_dotdot_hidden_in_the_middle_is_refused(tmp_path: Path) -> None:
    msg = bad(tmp_path, [E("a/b/../../../x", data=b"pwned")])
    assert msg == "IMG: member 'a/b/../../../x': path escapes the root ('..' component)"


def test_absolute_member_lands_under_the_root(tmp_path: Path) -> None:
    src = tmp_path / "abs.tar"
    marker = tmp_path / "host-file"
    src.write_bytes(make_tar([E(str(marker), data=b"inside")]))
    prepare_rootfs(src, tmp_path / "out")
    assert not marker.exists()
    assert (tmp_path / "out" / str(marker).lstrip("/")).read_bytes() == b"inside"


def test_member_under_symlinked_parent_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [E("link", kind="sym", target=str(outside)), E("link/passwd", data=b"pwned")]
    msg = bad(tmp_path, entries)
    assert msg == "IMG: member 'link/passwd': parent 'link' is a symlink"
    assert list(outside.iterdir()) == []


def test_hardlink_through_symlinked_parent_is_refused(tmp_path: Path) -> None:
    entries = [E("link", kind="sym", target="/etc"), E("x", kind="link", target="link/passwd")]
    msg = bad(tmp_path, entries)
    assert msg == "IMG: member 'x': hard link target 'link/passwd': parent 'link' is a symlink"


def test_hardlink_to_missing_target_is_refused(tmp_path: Path) -> None:
    msg = bad(tmp_path, [E("x", kind="link", target="nowhere")])
    assert msg == "IMG: member 'x': hard link target 'nowhere' is not extracted yet"


def test_file_replacing_a_symlink_does_not_write_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    src = tmp_path / "t.tar"
    src.write_bytes(make_tar([E("f", kind="sym", target=str(victim)), E("f", data=b"new")]))
    prepare_rootfs(src, tmp_path / "out")
    assert victim.read_bytes() == b"original"
    assert (tmp_path / "out/f").read_bytes() == b"new"


SPECIAL_WARNING = "skipped {n} device nodes, FIFOs and sockets (the guest mounts its own /dev)"


@pytest.fixture
def image_warnings() -> Iterator[list[str]]:
    """Warnings the image stage logs (a handler of our own: the CLI, run in-process by other
    tests, stops `smolpack` records from reaching the root logger and so caplog)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(logging.WARNING)
    log = logging.getLogger("smolpack.image")
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


def test_device_nodes_and_fifos_in_a_tar_are_skipped_with_one_warning(
    tmp_path: Path, image_warnings: list[str]
) -> None:
    src = tmp_path / "t.tar"
    entries = [E("dev", kind="dir"), E("dev/null", kind="chr"), E("dev/sda", kind="blk")]
    src.write_bytes(make_tar([*entries, E("run/initctl", kind="fifo"), E("etc/hosts")]))
    prepare_rootfs(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out/dev")) == []
    assert not os.path.lexists(tmp_path / "out/run/initctl")
    assert (tmp_path / "out/etc/hosts").exists()
    assert [m for m in image_warnings if "skipped" in m] == [
        f"{src}: " + SPECIAL_WARNING.format(n=3)
    ]


def test_special_member_with_dotdot_is_still_refused(tmp_path: Path) -> None:
    msg = bad(tmp_path, [E("../dev/null", kind="chr")])
    assert msg == "IMG: member '../dev/null': path escapes the root ('..' component)"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_special_files_in_rootfs_directory_are_skipped_with_one_warning(
    tmp_path: Path, image_warnings: list[str]
) -> None:
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "run").mkdir()
    os.mknod(src / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "dev/loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(src / "run/initctl")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "run/sock"))
    (src / "run/keep").write_text("x")
    prepare_rootfs(src, tmp_path / "out")
    assert os.listdir(tmp_path / "out/dev") == []
    assert os.listdir(tmp_path / "out/run") == ["keep"]
    assert [m for m in image_warnings if "skipped" in m] == [
        f"{src}: " + SPECIAL_WARNING.format(n=4)
    ]


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    data = bytearray(gz(make_tar([E("f", data=os.urandom(4000))])))
    data[30:60] = b"\xff" * 30
    src = tmp_path / "c.tar.gz"
    src.write_bytes(bytes(data))
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"{src}: corrupt gzip stream"


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    data = gz(make_tar([E("f", data=os.urandom(20000))]))
    src = tmp_path / "t.tar.gz"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"{src}: truncated gzip stream"


def test_truncated_tar_inside_member_is_refused(tmp_path: Path) -> None:
    data = make_tar([E("a", data=b"1"), E("big", data=b"x" * 5000)])
    src = tmp_path / "t.tar"
    src.write_bytes(data[:2048])
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"{src}: truncated tar (archive ends inside member 'big')"


def test_tar_cut_between_members_is_refused(tmp_path: Path) -> None:
    data = make_tar([E("a", data=b"1"), E("b", data=b"2")])
    src = tmp_path / "t.tar.zst"
    # PAX adds no extended headers here: each member is 512 header + 512 data.
    src.write_bytes(zst(data[:1024]))
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"{src}: truncated tar (no end-of-archive marker)"


def test_garbage_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "g.tar"
    src.write_bytes(b"this is not an archive at all\n" * 40)
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"{src}: not a tar archive (unknown format)"


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(tmp_path / "nope.tar", tmp_path / "out")
    assert str(exc.value) == f"image not found: {tmp_path / 'nope.tar'}"


def test_non_empty_destination_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "r.tar"
    src.write_bytes(make_tar([E("f", data=b"1")]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep").write_bytes(b"k")
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(src, tmp_path / "out")
    assert str(exc.value) == f"destination {tmp_path / 'out'} exists and is not an empty directory"
    assert (tmp_path / "out/keep").read_bytes() == b"k"


def test_failure_empties_an_existing_empty_destination(tmp_path: Path) -> None:
    src = tmp_path / "r.tar"
    src.write_bytes(make_tar([E("ok", data=b"1"), E("../escape", data=b"2")]))
    (tmp_path / "out").mkdir()
    with pytest.raises(ImageError):
        prepare_rootfs(src, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_pax_xattrs_are_kept(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("ping")
        ti.size = 4
        ti.pax_headers = {"SCHILY.xattr.user.smolpack": "yes"}
        tf.addfile(ti, io.BytesIO(b"ping"))
    src = tmp_path / "x.tar"
    src.write_bytes(buf.getvalue())
    prepare_rootfs(src, tmp_path / "out")
    assert os.getxattr(tmp_path / "out/ping", "user.smolpack") == b"yes"
