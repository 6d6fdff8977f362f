"""Embedding into PyInstaller's real macOS bootloader, checked with LIEF.

We cannot run arm64 macOS binaries here, so the result is parsed by LIEF (an
independent Mach-O implementation) and compared with the input: segment
order, offsets, alignment, vm ranges, untouched load commands and linkedit
data, and the payload found by the launcher's own reader.
"""

from __future__ import annotations

import struct
from pathlib import Path

import lief
import pytest
from embed_helpers import (
    CPU_ARM64,
    CPU_X86_64,
    LC_SEGMENT_64,
    MACHO_RUN,
    MiB,
    fake_archive,
    fat_slices,
    find_command,
    load_commands,
    make_fat,
    pyinstaller_onefile,
    replace_command_id,
    write_payload,
)

from smolpack.embed import embed_macho, embed_payload
from smolpack.errors import UsageError
from smolpack.payload import RAW_ALIGN, open_payload

lief.logging.disable()
LC_DATA_IN_CODE = 0x29
# symtab, dysymtab, dyld info, function starts, data in code: their offsets move
WITH_OFFSETS = (0x02, 0x0B, 0x80000022, 0x26, 0x29)
SEGMENTS = ["__PAGEZERO", "__TEXT", "__DATA_CONST", "__DATA", "__SMOLMACH", "__LINKEDIT"]


@pytest.fixture(scope="module")
def arm64() -> bytes:
    return fat_slices(MACHO_RUN.read_bytes())[CPU_ARM64]


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("macho-payload")
    return write_payload(d / "p.smolmachine", disk_size=40 * MiB + 123, data=b"data" * 4096)


def parse(data: bytes) -> lief.MachO.Binary:
    fat = lief.MachO.parse(list(data))
    assert fat is not None and fat.size == 1
    binary = fat.take(lief.MachO.Header.CPU_TYPE.ARM64)  # owned, outlives `fat`
    assert binary is not None
    return binary


def segment(binary: lief.MachO.Binary, name: str) -> lief.MachO.SegmentCommand:
    found = binary.get_segment(name)
    assert found is not None, name
    return found


def check_layout(
    before: lief.MachO.Binary, after: lief.MachO.Binary, size: int, payload_size: int
) -> None:
    assert after.header.cpu_type == lief.MachO.Header.CPU_TYPE.ARM64
    assert [s.name for s in after.segments] == SEGMENTS
    old_link, smol, link = (
        segment(before, "__LINKEDIT"),
        *(segment(after, n) for n in ("__SMOLMACH", "__LINKEDIT")),
    )
    # __SMOLMACH takes __LINKEDIT's old place in file and memory, 16 KiB-aligned.
    assert smol.file_offset == old_link.file_offset and smol.file_offset % RAW_ALIGN == 0
    assert smol.virtual_address == old_link.virtual_address
    assert smol.file_size == smol.virtual_size == -(-payload_size // RAW_ALIGN) * RAW_ALIGN
    assert smol.init_protection == smol.max_protection == 1  # VM_PROT_READ
    assert len(smol.sections) == 0
    # __LINKEDIT follows right after, in file and memory, and ends the file.
    assert link.file_offset == smol.file_offset + smol.file_size
    assert link.virtual_address == smol.virtual_address + smol.virtual_size
    assert link.virtual_size == -(-link.file_size // RAW_ALIGN) * RAW_ALIGN
    assert link.file_offset + link.file_size == size
    # The segments before ours did not change at all.
    for name in SEGMENTS[:4]:
        old, new = segment(before, name), segment(after, name)
        assert (old.virtual_address, old.virtual_size, old.file_offset, old.file_size) == (
            new.virtual_address, new.virtual_size, new.file_offset, new.file_size,
        )  # fmt: skip
        # (__TEXT starts with the header and load commands; compare from its first section.)
        skip = min((sec.offset for sec in old.sections), default=0)
        assert bytes(old.content)[skip:] == bytes(new.content)[skip:], name
    # Every other load command is still there, in order; the signature is gone.
    kept = [
        c.command
        for c in before.commands
        if c.command != lief.MachO.LoadCommand.TYPE.CODE_SIGNATURE
    ]
    new_cmds = [c.command for c in after.commands]
    smol_index = SEGMENTS.index("__SMOLMACH")
    assert new_cmds[:smol_index] + new_cmds[smol_index + 1 :] == kept
    assert not after.has_code_signature
    # What __LINKEDIT holds moved with it, unchanged.
    assert [s.name for s in after.symbols] == [s.name for s in before.symbols]
    assert [(s.name, s.value) for s in after.symbols] == [(s.name, s.value) for s in before.symbols]
    for attr in ("rebase_opcodes", "bind_opcodes", "lazy_bind_opcodes", "export_trie"):
        assert bytes(getattr(after.dyld_info, attr)) == bytes(getattr(before.dyld_info, attr)), attr
    assert list(after.function_starts.functions) == list(before.function_starts.functions)
    assert after.main_command.entrypoint == before.main_command.entrypoint
    assert [lib.name for lib in after.libraries] == [lib.name for lib in before.libraries]
    assert [f.name for f in after.imported_functions] == [f.name for f in before.imported_functions]


def check_payload_found(out: Path, origin: int) -> None:
    with open_payload(out) as p:
        assert p.location.container == "macho"
        assert p.location.origin == origin
        assert p.verify() == 2


def test_universal_bootloader_gives_a_thin_arm64_with_the_segment(
    tmp_path: Path, payload: Path, arm64: bytes
) -> None:
    result = embed_payload(MACHO_RUN, payload, tmp_path / "tool", target="macos-arm64")
    assert (result.container, result.target, result.needs_signing) == (
        "macho",
        "macos-arm64",
        True,
    )
    data = result.out.read_bytes()
    assert len(data) == result.size
    assert result.out.stat().st_mode & 0o777 == 0o755
    check_layout(parse(arm64), parse(data), len(data), result.payload_size)
    check_payload_found(result.out, result.payload_offset)
    # The payload bytes sit at the origin verbatim, zero-padded to the segment end.
    smol = segment(parse(data), "__SMOLMACH")
    assert data[result.payload_offset : result.payload_offset + result.payload_size] == (
        payload.read_bytes()
    )
    assert not data[
        result.payload_offset + result.payload_size : smol.file_offset + smol.file_size
    ].strip(b"\0")


@pytest.mark.parametrize("signed", [True, False])
def test_pyinstaller_onefile_keeps_its_archive_at_the_end(
    tmp_path: Path, payload: Path, arm64: bytes, signed: bool
) -> None:
    archive = fake_archive()
    stub = tmp_path / "onefile"
    stub.write_bytes(pyinstaller_onefile(arm64, archive, signed=signed))
    result = embed_macho(stub, payload, tmp_path / "tool")
    data = result.out.read_bytes()
    before, after = parse(stub.read_bytes()), parse(data)
    check_layout(before, after, len(data), result.payload_size)
    check_payload_found(result.out, result.payload_offset)
    # The bootloader scans back from the end for its cookie: the archive must
    # still end the file (the stripped signature went with it), and it stays
    # inside the string table, so codesign accepts the file.
    assert data.endswith(archive)
    symtab = after.symbol_command
    assert symtab.strings_offset + symtab.strings_size == len(data)
    # Nothing else changed size: the stub before signing, plus our segment.
    unsigned = len(pyinstaller_onefile(arm64, archive, signed=False))
    assert len(data) == unsigned + segment(after, "__SMOLMACH").file_size


def test_header_space_freed_by_the_signature_is_zeroed(
    tmp_path: Path, payload: Path, arm64: bytes
) -> None:
    result = embed_macho(MACHO_RUN, payload, tmp_path / "tool")
    data = result.out.read_bytes()
    sizeofcmds = struct.unpack_from("<I", data, 20)[0]
    old_sizeofcmds = struct.unpack_from("<I", arm64, 20)[0]
    assert sizeofcmds == old_sizeofcmds - 16 + 72
    assert not data[32 + sizeofcmds : 32 + max(sizeofcmds, old_sizeofcmds)].strip(b"\0")


def test_refusals(tmp_path: Path, payload: Path, arm64: bytes) -> None:
    slices = fat_slices(MACHO_RUN.read_bytes())
    x86 = slices[CPU_X86_64]
    cases = {
        "x86_64": (x86, r"is a macos-x86_64 executable; the macOS target is macos-arm64"),
        "fat-x86": (make_fat([(CPU_X86_64, x86)]), r"without an arm64 slice \(has x86_64\)"),
        "fixups": (replace_command_id(arm64, LC_DATA_IN_CODE, 0x80000034), r"chained fixups"),
        "unknown": (replace_command_id(arm64, LC_DATA_IN_CODE, 0x99), r"command 0x99 is unknown"),
        "appended": (arm64 + b"appended archive", r"data at offset \d+ after __LINKEDIT"),
        "no-room": (_no_header_room(arm64), r"no room for one more load command"),
    }
    for name, (data, message) in cases.items():
        stub = tmp_path / name
        stub.write_bytes(data)
        with pytest.raises(UsageError, match=message) as err:
            embed_payload(stub, payload, tmp_path / "tool")
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
    with pytest.raises(UsageError, match=r"is a macos-arm64 executable, but the target is linux"):
        embed_payload(MACHO_RUN, payload, tmp_path / "tool", target="linux-x86_64")
    assert not (tmp_path / "tool").exists()


def _no_header_room(image: bytes) -> bytes:
    """The image with __TEXT's first section moved up to just after the commands."""
    out = bytearray(image)
    sizeofcmds = struct.unpack_from("<I", out, 20)[0]
    text = find_command(out, LC_SEGMENT_64, b"__TEXT")
    struct.pack_into("<I", out, text + 72 + 48, 32 + sizeofcmds + 8)  # section_64.offset
    return bytes(out)


def test_a_packed_stub_is_refused(tmp_path: Path, payload: Path) -> None:
    packed = embed_payload(MACHO_RUN, payload, tmp_path / "tool").out
    with pytest.raises(UsageError, match=r"already carries a payload \(segment __SMOLMACH\)"):
        embed_payload(packed, payload, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_load_commands_of_the_input_are_intact(tmp_path: Path, payload: Path, arm64: bytes) -> None:
    # Byte for byte: commands without file offsets are unchanged, the others
    # differ only in offsets that moved by exactly the segment size.
    result = embed_macho(MACHO_RUN, payload, tmp_path / "tool")
    data = result.out.read_bytes()
    delta = segment(parse(data), "__SMOLMACH").file_size
    old = [(c, arm64[p : p + n]) for c, p, n in load_commands(arm64) if c != 0x1D]
    new = [(c, data[p : p + n]) for c, p, n in load_commands(data)]
    new = [x for x in new if x[1][8:24].rstrip(b"\0") != b"__SMOLMACH"]
    assert [c for c, _ in old] == [c for c, _ in new]
    for (cmd, a), (_, b) in zip(old, new, strict=True):
        if cmd in WITH_OFFSETS:
            words_a = struct.unpack(f"<{len(a) // 4}I", a)
            words_b = struct.unpack(f"<{len(b) // 4}I", b)
            assert all(y in (x, x + delta) for x, y in zip(words_a, words_b, strict=True)), hex(cmd)
        elif cmd != LC_SEGMENT_64 or a[8:24].rstrip(b"\0") != b"__LINKEDIT":
            assert a == b, hex(cmd)
