"""Root tree → ext4 base image with the real mkfs.ext4, checked with debugfs/e2fsck."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
from image_helpers import E, make_tar

import smolpack.disk
from smolpack.disk import MIB, build_ext4
from smolpack.errors import HostError, ImageError
from smolpack.image import prepare_rootfs

ROOTFS = [
    E("bin", kind="dir", mode=0o755),
    E("bin/su", data=b"#!su\n", mode=0o4755),
    E("home/user/notes.txt", data=b"owned by 1000\n", mode=0o640, uid=1000, gid=100),
    E("home/user/same", kind="link", target="home/user/notes.txt"),
    E("etc/mtab", kind="sym", target="/proc/self/mounts"),
    E("tmp", kind="dir", mode=0o1777),
    E("big", data=bytes(range(256)) * 4096),  # 1 MiB
]


def debugfs(image: Path, request: str) -> str:
    res = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, check=True, text=False
    )
    return res.stdout.decode("utf-8", "replace")


def inode(image: Path, path: str) -> dict[str, str]:
    text = debugfs(image, f"stat {path}")
    m = re.search(r"Inode: (\d+)\s+Type: (\w+)\s+Mode:\s+(\d+)", text)
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    assert m and u, text
    return {"ino": m[1], "type": m[2], "mode": m[3], "uid": u[1], "gid": u[2]}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "rootfs.tar"
    src.write_bytes(make_tar(ROOTFS))
    prepare_rootfs(src, tmp_path / "tree")
    return tmp_path / "tree"


def test_image_holds_content_modes_owners_and_extras(tmp_path: Path, tree: Path) -> None:
    agent = tmp_path / "agent-bin"
    agent.write_bytes(b"\x7fELF agent")
    out = tmp_path / "base.img"
    build_ext4(tree, out, extra_files={"/smolpack/agent": (agent, 0o755)})

    assert debugfs(out, "cat /home/user/notes.txt") == "owned by 1000\n"
    notes = inode(out, "/home/user/notes.txt")
    assert notes | {"ino": ""} == {
        "ino": "",
        "type": "regular",
        "mode": "0640",
        "uid": "1000",
        "gid": "100",
    }
    assert inode(out, "/home/user/same")["ino"] == notes["ino"]
    assert inode(out, "/bin/su")["mode"] == "04755"
    assert inode(out, "/tmp")["mode"] == "01777"
    assert 'Fast link dest: "/proc/self/mounts"' in debugfs(out, "stat /etc/mtab")
    assert debugfs(out, "cat /smolpack/agent") == "\x7fELF agent"
    assert inode(out, "/smolpack/agent") | {"ino": ""} == {
        "ino": "",
        "type": "regular",
        "mode": "0755",
        "uid": "0",
        "gid": "0",
    }
    dumped = subprocess.run(
        ["debugfs", "-R", "dump /big " + str(tmp_path / "big.out"), str(out)], capture_output=True
    )
    assert dumped.returncode == 0
    assert (tmp_path / "big.out").read_bytes() == bytes(range(256)) * 4096
    fsck = subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    assert (
        "has_journal"
        not in subprocess.run(["dumpe2fs", "-h", str(out)], capture_output=True, text=True).stdout
    )


def test_image_size_is_content_plus_headroom(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "base.img"
    build_ext4(tree, out, headroom_mib=32)
    size = out.stat().st_size
    assert size % MIB == 0
    assert 33 * MIB <= size <= 40 * MIB  # ~1 MiB of content + 32 MiB + metadata slack
    head = subprocess.run(["dumpe2fs", "-h", str(out)], capture_output=True, text=True).stdout
    free_blocks = int(re.search(r"Free blocks:\s+(\d+)", head)[1])  # type: ignore[index]
    assert free_blocks * 4096 >= 32 * MIB


def test_same_tree_twice_gives_identical_images(tmp_path: Path) -> None:
    digests = []
    src = tmp_path / "rootfs.tar"
    src.write_bytes(make_tar(ROOTFS))
    agent = tmp_path / "agent"
    agent.write_bytes(b"agent")
    for i in range(2):
        prepare_rootfs(src, tmp_path / f"tree{i}")
        build_ext4(
            tmp_path / f"tree{i}",
            tmp_path / f"img{i}",
            extra_files={"/smolpack/agent": (agent, 0o755)},
        )
        digests.append(hashlib.sha256((tmp_path / f"img{i}").read_bytes()).hexdigest())
        time.sleep(1.1)  # mke2fs stamps some times in whole seconds from the clock
    assert digests[0] == digests[1]


def test_different_trees_get_different_uuids(tmp_path: Path, tree: Path) -> None:
    build_ext4(tree, tmp_path / "a.img")
    (tree / "extra").write_bytes(b"x")
    build_ext4(tree, tmp_path / "b.img")

    def uuid_of(p: Path) -> str:
        head = subprocess.run(["dumpe2fs", "-h", str(p)], capture_output=True, text=True).stdout
        return re.search(r"Filesystem UUID:\s+(\S+)", head)[1]  # type: ignore[index]

    assert uuid_of(tmp_path / "a.img") != uuid_of(tmp_path / "b.img")


def test_missing_extra_file_leaves_no_image(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out" / "base.img"
    with pytest.raises(ImageError) as exc:
        build_ext4(tree, out, extra_files={"/smolpack/agent": (tmp_path / "nope", 0o755)})
    assert str(exc.value) == (
        f"extra file {tmp_path / 'nope'} for /smolpack/agent: No such file or directory"
    )
    assert not out.exists()


def test_extra_file_under_a_symlink_is_refused(tmp_path: Path, tree: Path) -> None:
    (tree / "smolpack").symlink_to(tmp_path)
    agent = tmp_path / "agent"
    agent.write_bytes(b"a")
    with pytest.raises(ImageError) as exc:
        build_ext4(tree, tmp_path / "x.img", extra_files={"/smolpack/agent": (agent, 0o755)})
    assert str(exc.value) == f"{tree}: cannot add /smolpack/agent: parent 'smolpack' is a symlink"
    assert agent.read_bytes() == b"a"


def test_mkfs_failure_leaves_no_partial_image(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "base.img"
    out.write_bytes(b"previous image")
    (tree / "real").write_bytes(b"\xa5" * (3 * MIB))
    # Make the size planner under-estimate so the real mke2fs runs out of space.
    monkeypatch.setattr(smolpack.disk, "plan_size", lambda data, inodes, headroom: (2, 128))
    with pytest.raises(ImageError) as exc:
        build_ext4(tree, out)
    assert str(exc.value).startswith(f"mkfs.ext4 for {out} failed: ")
    assert out.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "rootfs.tar", "tree"]


def test_old_mkfs_is_a_host_error(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mkfs.ext4").write_text("#!/bin/sh\necho 'mke2fs 1.42.9 (28-Dec-2013)' >&2\n")
    (fake / "mkfs.ext4").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(HostError) as exc:
        build_ext4(tree, tmp_path / "x.img")
    assert str(exc.value) == (
        f"{fake / 'mkfs.ext4'} is mke2fs 1.42; `-d` needs e2fsprogs >= 1.43;"
        " install a newer e2fsprogs (apt-get install e2fsprogs)"
    )
    assert exc.value.exit_code == 4


def test_extras_keep_existing_directory_metadata(tmp_path: Path, tree: Path) -> None:
    (tree / "bin").chmod(0o711)
    before = {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in (tree, tree / "bin")}
    agent = tmp_path / "agent"
    agent.write_bytes(b"a")
    build_ext4(tree, tmp_path / "x.img", extra_files={"/bin/agent": (agent, 0o700)})
    after = {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in (tree, tree / "bin")}
    assert after == before
    assert inode(tmp_path / "x.img", "/bin")["mode"] == "0711"
    assert inode(tmp_path / "x.img", "/bin/agent")["mode"] == "0700"
