"""What QEMU is told: paths with `,` survive its option parser, the pack goes in as an fd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from payload_helpers import write_fake_pack

from smolpack.engine.qemu import QemuMachine, RootDisk, qemu_argv
from smolpack.integrity import file_key
from smolpack.payload import open_payload

MACHINE = QemuMachine(guest_arch="x86_64", cpus=1, memory_mib=256, kernel=Path("/k,ernel"))


def argv(disk: RootDisk) -> list[str]:
    return qemu_argv(
        MACHINE,
        disk,
        binary="qemu-system-x86_64",
        accel="tcg",
        qmp_fd=3,
        agent_fd=4,
        console_fd=5,
        incoming_fd=None,
    )


def option(args: list[str], flag: str, starts: str) -> str:
    return next(
        v for f, v in zip(args, args[1:], strict=False) if f == flag and v.startswith(starts)
    )


def test_commas_in_paths_are_doubled() -> None:
    disk = RootDisk(path=Path("/a,b=c/base.raw"), size=4096, overlay=Path("/run,x/ov.qcow2"))
    args = argv(disk)
    assert "filename=/a,,b=c/base.raw," in option(args, "-blockdev", "driver=file")
    assert "file.filename=/run,,x/ov.qcow2," in option(args, "-blockdev", "driver=qcow2")
    # -kernel is not an option list: its value is taken whole.
    assert option(args, "-kernel", "/") == "/k,ernel"
    # The console is a socket fd now: no path on the command line at all.
    assert option(args, "-chardev", "socket,id=con") == "socket,id=con,fd=5"


def test_a_pack_disk_is_read_through_its_fd() -> None:
    disk = RootDisk(path=Path("/p/tool"), fd=9, offset=8192, size=4096, overlay=Path("/o"))
    args = argv(disk)
    assert option(args, "-add-fd", "fd=") == "fd=9,set=1"
    base = option(args, "-blockdev", "driver=file")
    assert base == "driver=file,node-name=base-file,filename=/dev/fdset/1,read-only=on"
    assert not any("/p/tool" in a for a in args)


def test_verified_mark_is_keyed_on_the_open_file_not_the_path(tmp_path: Path) -> None:
    pack = write_fake_pack(tmp_path / "tool")
    twin = tmp_path / "twin"
    shutil.copy(pack, twin)  # same bytes and index, another file
    with open_payload(pack) as first:
        os.replace(twin, pack)  # the path now names the twin
        with open_payload(pack) as second:
            # Keyed on the path, both would be the twin's key: the first payload (the one a
            # run verified and hands to QEMU) would borrow the twin's verification.
            assert file_key(first) != file_key(second)
