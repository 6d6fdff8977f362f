"""Finding the payload in standalone files, real ELF executables (objcopy) and Mach-O."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from payload_helpers import VECTORS

from smolpack.errors import BadLayout, NotASmolmachine, PayloadTruncated
from smolpack.payload import find_origin, open_payload

SAMPLE = VECTORS / "valid" / "sample.smolmachine"
TRUE = Path(shutil.which("true") or "/bin/true")

needs_objcopy = pytest.mark.skipif(shutil.which("objcopy") is None, reason="needs binutils")


def section_offset(elf: Path, name: str) -> int:
    out = subprocess.run(["readelf", "-S", "-W", str(elf)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 4 and fields[1] == name:
            return int(fields[4], 16)
    raise AssertionError(f"{name} not in {elf}")


def embed_elf(tmp: Path, payload: Path, *, aligned: bool = True) -> Path:
    """Add `payload` as section .smolmachine of a copy of /bin/true, using objcopy.

    objcopy ignores --set-section-alignment for the file offset of a
    non-loaded section, so a padding section placed before it does the
    aligning: probe where the pad lands, then size it to reach 16 KiB.
    """
    out = tmp / "packed"
    args = ["objcopy", "--add-section", f".smolmachine={payload}"]
    if aligned:
        (tmp / "pad").write_bytes(b"\0")
        subprocess.run(
            ["objcopy", "--add-section", f".smolpad={tmp / 'pad'}", str(TRUE), str(out)],
            check=True,
        )
        at = section_offset(out, ".smolpad")
        (tmp / "pad").write_bytes(bytes(-at % 16384 or 16384))
        args += ["--add-section", f".smolpad={tmp / 'pad'}"]
    subprocess.run([*args, str(TRUE), str(out)], check=True)
    return out


@needs_objcopy
def test_payload_in_a_real_elf_is_found_and_the_binary_still_runs(tmp_path: Path) -> None:
    packed = embed_elf(tmp_path, SAMPLE)
    origin = section_offset(packed, ".smolmachine")
    assert origin % 16384 == 0 and origin > 0
    assert find_origin(packed) == origin
    with open_payload(packed) as p:
        assert p.location.container == "elf"
        assert p.verify() == 6
        assert p.read_section("kernel").startswith(b"\x7fELF kernel stand-in")
        file_offset, _ = p.section_file_range("disk")
        assert file_offset == origin + p.sections["disk"].offset
        assert file_offset % 16384 == 0
    assert subprocess.run([str(packed)]).returncode == 0
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", "inspect", str(packed)], capture_output=True, text=True
    )
    assert res.returncode == 0
    assert (
        res.stdout.splitlines()[1] == f"  origin    {origin} (embedded in ELF at offset {origin})"
    )


@needs_objcopy
def test_unaligned_elf_section_is_refused(tmp_path: Path) -> None:
    packed = embed_elf(tmp_path, SAMPLE, aligned=False)
    at = section_offset(packed, ".smolmachine")
    assert at % 16384  # objcopy's own placement (this is why embed_elf pads)
    with pytest.raises(BadLayout) as exc:
        open_payload(packed)
    assert exc.value.message == (
        f"{packed}: ELF section .smolmachine starts at offset {at}, which is not 16384-aligned"
    )


@needs_objcopy
def test_elf_section_smaller_than_payload_is_bad_layout(tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(SAMPLE.read_bytes()[:-100])
    packed = embed_elf(tmp_path, cut)
    with pytest.raises(BadLayout, match="payload_size 131888 exceeds the elf container of 131788"):
        open_payload(packed)


def test_elf_without_payload_section(tmp_path: Path) -> None:
    with pytest.raises(NotASmolmachine) as exc:
        open_payload(TRUE)
    assert exc.value.message == f"{TRUE}: ELF file has no .smolmachine section"


@needs_objcopy
def test_truncated_elf_is_truncated(tmp_path: Path) -> None:
    packed = embed_elf(tmp_path, SAMPLE)
    data = packed.read_bytes()
    (tmp_path / "short").write_bytes(data[: len(data) // 2])
    with pytest.raises(PayloadTruncated, match="ELF section table ends at offset"):
        open_payload(tmp_path / "short")


def test_32_bit_elf_is_not_a_payload(tmp_path: Path) -> None:
    data = bytearray(TRUE.read_bytes())
    data[4] = 1  # ELFCLASS32
    (tmp_path / "elf32").write_bytes(bytes(data))
    with pytest.raises(NotASmolmachine, match="not 64-bit little-endian"):
        open_payload(tmp_path / "elf32")


def macho(payload: bytes, *, segname: bytes = b"__SMOLMACH", fileoff: int = 16384) -> bytes:
    """A minimal Mach-O 64 with __PAGEZERO and one segment holding `payload`."""
    seg = struct.Struct("<II16sQQQQiiII")
    pagezero = seg.pack(0x19, 72, b"__PAGEZERO", 0, 1 << 32, 0, 0, 0, 0, 0, 0)
    ours = seg.pack(0x19, 72, segname, 1 << 32, len(payload), fileoff, len(payload), 1, 1, 0, 0)
    cmds = pagezero + ours
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 2, 2, len(cmds), 0, 0)
    head = header + cmds
    return head + bytes(fileoff - len(head)) + payload


def test_payload_in_macho_segment(tmp_path: Path) -> None:
    (tmp_path / "tool").write_bytes(macho(SAMPLE.read_bytes()))
    with open_payload(tmp_path / "tool") as p:
        assert (p.origin, p.location.container) == (16384, "macho")
        assert p.verify() == 6


def test_macho_without_segment_and_misaligned(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(macho(SAMPLE.read_bytes(), segname=b"__TEXT"))
    with pytest.raises(NotASmolmachine, match="Mach-O file has no __SMOLMACH segment"):
        open_payload(tmp_path / "a")
    (tmp_path / "b").write_bytes(macho(SAMPLE.read_bytes(), fileoff=4096))
    with pytest.raises(BadLayout, match="segment __SMOLMACH starts at offset 4096"):
        open_payload(tmp_path / "b")


def test_macho_with_lying_load_commands(tmp_path: Path) -> None:
    data = bytearray(macho(SAMPLE.read_bytes()))
    struct.pack_into("<I", data, 32 + 4, 4)  # first cmdsize 4 (< 8)
    (tmp_path / "c").write_bytes(bytes(data))
    with pytest.raises(BadLayout, match="load command 0 has bad cmdsize 4"):
        open_payload(tmp_path / "c")
    struct.pack_into("<I", data, 20, 1 << 30)  # sizeofcmds 1 GiB
    (tmp_path / "d").write_bytes(bytes(data))
    with pytest.raises(BadLayout, match="too large"):
        open_payload(tmp_path / "d")


def test_prefix_of_magic_is_truncated_other_bytes_are_not_a_payload(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"SMOL")
    with pytest.raises(PayloadTruncated):
        open_payload(tmp_path / "p")
    (tmp_path / "q").write_bytes(b"SMOX")
    with pytest.raises(NotASmolmachine):
        open_payload(tmp_path / "q")
    with pytest.raises(NotASmolmachine, match="is not a regular file"):
        open_payload(tmp_path)
