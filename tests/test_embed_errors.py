"""Embedding: user errors are one-line typed errors, and nothing is left behind.

Uses /bin/true as a small real ELF stub (no PyInstaller needed here).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from embed_helpers import MiB, write_payload
from payload_helpers import VECTORS

from smolpack.embed import TARGETS, embed_elf, embed_payload
from smolpack.errors import NotASmolmachine, PayloadTruncated, UsageError
from smolpack.payload import RAW_ALIGN, open_payload

TRUE = Path(shutil.which("true") or "/bin/true")


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    return write_payload(tmp_path / "p.smolmachine", disk_size=4 * MiB, data=b"data" * 1000)


def stub_copy(tmp_path: Path, name: str = "stub") -> Path:
    stub = tmp_path / name
    shutil.copyfile(TRUE, stub)
    return stub


def entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_plain_elf_gets_the_payload_and_still_runs(tmp_path: Path, payload: Path) -> None:
    result = embed_payload(TRUE, payload, tmp_path / "tool")
    assert result.container == "elf" and not result.needs_signing
    assert result.target in TARGETS
    assert result.payload_offset % RAW_ALIGN == 0
    assert subprocess.run([str(result.out)]).returncode == 0
    with open_payload(result.out) as p:
        assert p.location.origin == result.payload_offset
        assert p.verify() == 2
    assert entries(tmp_path) == {"p.smolmachine", "tool"}


def test_an_existing_output_is_replaced(tmp_path: Path, payload: Path) -> None:
    (tmp_path / "tool").write_bytes(b"old")
    embed_payload(TRUE, payload, tmp_path / "tool")
    assert (tmp_path / "tool").read_bytes()[:4] == b"\x7fELF"


def test_ctrl_c_while_copying_leaves_nothing_behind(tmp_path: Path, payload: Path) -> None:
    (tmp_path / "tool").write_bytes(b"old")
    seen = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_payload(TRUE, payload, tmp_path / "tool", progress=interrupt)
    assert seen  # the copy had started
    assert (tmp_path / "tool").read_bytes() == b"old"
    assert entries(tmp_path) == {"p.smolmachine", "tool"}


def test_progress_reaches_the_total(tmp_path: Path, payload: Path) -> None:
    calls: list[tuple[int, int]] = []
    embed_payload(TRUE, payload, tmp_path / "tool", progress=lambda d, t: calls.append((d, t)))
    done, total = calls[-1]
    assert done == total > 0
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize(
    ("make_stub", "message"),
    [
        (lambda d: d / "missing", r"missing: stub not found$"),
        (lambda d: d, r": the stub is not a regular file$"),
        (
            lambda d: _write(d / "script", b"#!/bin/sh\necho hi\n"),
            r"not an executable smolpack can",
        ),
        (lambda d: _write(d / "empty", b""), r"not an executable smolpack can embed into"),
        (lambda d: _elf_with(d, 4, 1), r"not a 64-bit little-endian ELF"),
        (lambda d: _elf_with(d, 18, 40), r"ELF machine 40 is not x86_64 or aarch64"),
        (lambda d: _elf_with(d, 16, 1), r"ELF type 1 is not an executable"),
        (lambda d: _append(stub_copy(d), b"appended archive"), r"unknown data at offset \d+"),
    ],
)
def test_bad_stubs_are_refused_with_one_line(
    tmp_path: Path, payload: Path, make_stub: object, message: str
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub = make_stub(stubs)  # type: ignore[operator]
    with pytest.raises(UsageError, match=message) as err:
        embed_payload(stub, payload, tmp_path / "tool")
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert entries(tmp_path) == {"p.smolmachine", "stubs"}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _append(path: Path, data: bytes) -> Path:
    with open(path, "ab") as f:
        f.write(data)
    return path


def _elf_with(directory: Path, offset: int, value: int) -> Path:
    """A copy of /bin/true with one byte of the ELF header changed."""
    stub = stub_copy(directory, f"elf-{offset}")
    data = bytearray(stub.read_bytes())
    data[offset] = value
    stub.write_bytes(data)
    return stub


def test_an_aarch64_stub_is_checked_against_the_target(tmp_path: Path, payload: Path) -> None:
    stub = stub_copy(tmp_path)
    data = bytearray(stub.read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine = EM_AARCH64
    stub.write_bytes(data)
    with pytest.raises(UsageError, match=r"is a linux-aarch64 executable, but the target is linux"):
        embed_payload(stub, payload, tmp_path / "tool", target="linux-x86_64")
    result = embed_elf(stub, payload, tmp_path / "tool", target="linux-aarch64")
    assert result.target == "linux-aarch64"
    with pytest.raises(
        UsageError, match=r"is a linux-aarch64 executable, but the target is macos-arm64$"
    ):
        embed_payload(stub, payload, tmp_path / "x", target="macos-arm64")
    with pytest.raises(UsageError, match=r"unknown target 'windows'"):
        embed_payload(TRUE, payload, tmp_path / "x", target="windows")
    assert entries(tmp_path) == {"p.smolmachine", "stub", "tool"}


def test_a_damaged_payload_keeps_its_own_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a payload at all")
    with pytest.raises(NotASmolmachine):
        embed_payload(TRUE, tmp_path / "junk", tmp_path / "tool")
    (tmp_path / "cut").write_bytes((VECTORS / "valid" / "sample.smolmachine").read_bytes()[:20000])
    with pytest.raises(PayloadTruncated):
        embed_payload(TRUE, tmp_path / "cut", tmp_path / "tool")
    with pytest.raises(UsageError, match=r"missing.smolmachine: payload not found$"):
        embed_payload(TRUE, tmp_path / "missing.smolmachine", tmp_path / "tool")
    assert entries(tmp_path) == {"junk", "cut"}


def test_an_embedded_payload_is_not_a_payload_input(tmp_path: Path, payload: Path) -> None:
    packed = embed_payload(TRUE, payload, tmp_path / "tool").out
    with pytest.raises(UsageError, match=r"already embedded in an executable \(elf\)"):
        embed_payload(TRUE, packed, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_bad_output_paths(tmp_path: Path, payload: Path) -> None:
    stub = stub_copy(tmp_path)
    with pytest.raises(UsageError, match=r"directory .*nope does not exist"):
        embed_payload(stub, payload, tmp_path / "nope" / "tool")
    with pytest.raises(UsageError, match=r"cannot write into .*: Not a directory"):
        embed_payload(stub, payload, payload / "tool")
    with pytest.raises(UsageError, match=r"is a directory"):
        embed_payload(stub, payload, tmp_path)
    with pytest.raises(UsageError, match=r"the output would overwrite the stub"):
        embed_payload(stub, payload, stub)
    with pytest.raises(UsageError, match=r"the output would overwrite the payload"):
        embed_payload(stub, payload, payload)
    assert entries(tmp_path) == {"p.smolmachine", "stub"}


def test_unwritable_output_directory(tmp_path: Path, payload: Path) -> None:
    # sysfs refuses new files even to root, unlike a chmod 0500 directory.
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs sysfs")
    with pytest.raises(UsageError, match=r"cannot write into /sys/kernel: Permission denied$"):
        embed_payload(TRUE, payload, "/sys/kernel/tool")
    assert not os.path.exists("/sys/kernel/tool")
