"""smolpack.kernel: PVH note search, the ELF wrapper's exact bytes, the real libkrunfw kernel."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smolpack.errors import HostError
from smolpack.kernel import (
    KernelBlob,
    extract_kernel,
    find_pvh_entry,
    kernel_elf_path,
    wrap_pvh_elf,
)
from smolpack.runtime_libs import find_runtime_libs

NO_NOTE = (
    "guest kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), QEMU cannot boot it;"
    " use a libkrunfw whose kernel is built with CONFIG_PVH=y"
)


def note(entry: int, descsz: int = 8) -> bytes:
    return struct.pack("<III", 4, descsz, 18) + b"Xen\x00" + entry.to_bytes(descsz, "little")


def blob_with(data: bytes, load_addr: int = 0x1000000) -> KernelBlob:
    return KernelBlob(data=data, load_addr=load_addr, entry_addr=0, version="x", abi_version=5)


@pytest.mark.parametrize("descsz", [4, 8])
def test_finds_note_anywhere(descsz: int) -> None:
    data = b"\xcc" * 1001 + note(0x1EA1C10, descsz) + b"\x00" * 7
    assert find_pvh_entry(data) == 0x1EA1C10


def test_skips_lookalike_with_zero_entry() -> None:
    assert find_pvh_entry(note(0) + note(0x2000)) == 0x2000


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 4096,
        struct.pack("<III", 4, 8, 17) + b"Xen\x00" + bytes(8),  # another Xen note type
        struct.pack("<III", 4, 8, 18) + b"Xen\x00" + b"\x10\x00",  # cut short
    ],
)
def test_no_note_is_a_host_error(data: bytes) -> None:
    with pytest.raises(HostError) as exc:
        find_pvh_entry(data)
    assert str(exc.value) == NO_NOTE
    assert exc.value.exit_code == 4


@given(st.binary(max_size=512))
@example(struct.pack("<III", 4, 8, 18) + b"Xen\x00")
def test_any_bytes_give_an_entry_or_our_error(data: bytes) -> None:
    try:
        entry = find_pvh_entry(data)
    except HostError as err:
        assert str(err) == NO_NOTE
    else:
        assert 0 < entry < 1 << 32


def test_wrapper_bytes_exactly() -> None:
    body = b"\x90" * 0x300 + note(0x1000123) + b"\xcc" * 0x1D
    elf = wrap_pvh_elf(blob_with(body))
    assert len(elf) == 0x1000 + len(body)
    # ELF header
    assert elf[:16] == b"\x7fELF\x02\x01\x01" + bytes(9)
    e_type, e_machine, e_version, e_entry, e_phoff, e_shoff = struct.unpack_from("<HHIQQQ", elf, 16)
    assert (e_type, e_machine, e_version) == (2, 62, 1)
    assert (e_entry, e_phoff, e_shoff) == (0x1000123, 64, 0)
    assert struct.unpack_from("<IHHHHHH", elf, 48) == (0, 64, 56, 2, 0, 0, 0)
    # program headers: type, flags, offset, vaddr, paddr, filesz, memsz, align
    phdr = struct.Struct("<IIQQQQQQ")
    assert phdr.unpack_from(elf, 64) == (4, 4, 0xB0, 0, 0, 24, 24, 4)
    size = len(body)
    assert phdr.unpack_from(elf, 120) == (1, 7, 0x1000, 0x1000000, 0x1000000, size, size, 0x1000)
    # the note: namesz 4, descsz 8, type 18, "Xen\0", entry u64
    assert elf[0xB0 : 0xB0 + 24] == (
        bytes.fromhex("04000000 08000000 12000000") + b"Xen\x00" + bytes.fromhex("2301000100000000")
    )
    assert elf[0xC8:0x1000] == bytes(0x1000 - 0xC8)
    assert elf[0x1000:] == body


def test_wrapper_needs_page_aligned_load_address() -> None:
    with pytest.raises(ValueError, match="0x1000200 is not page-aligned"):
        wrap_pvh_elf(blob_with(note(0x1000), load_addr=0x1000200))


def test_wrapper_without_note_is_a_host_error() -> None:
    with pytest.raises(HostError, match="no PVH entry note"):
        wrap_pvh_elf(blob_with(b"\x90" * 4096))


# -- against the real libkrunfw -------------------------------------------------


@pytest.fixture(scope="module")
def real_blob() -> KernelBlob:
    return extract_kernel(find_runtime_libs())


def test_real_kernel_facts(real_blob: KernelBlob) -> None:
    assert real_blob.load_addr == 0x1000000
    assert real_blob.abi_version == 5
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", real_blob.version)
    assert len(real_blob.data) > 4 << 20
    end = real_blob.load_addr + len(real_blob.data)
    assert real_blob.load_addr <= real_blob.entry_addr < end
    assert real_blob.load_addr <= find_pvh_entry(real_blob.data) < end


def test_real_kernel_elf_is_cached_and_readelf_agrees(
    real_blob: KernelBlob, tmp_path: Path
) -> None:
    path = kernel_elf_path(real_blob, root=tmp_path)
    assert path == kernel_elf_path(real_blob, root=tmp_path)
    assert path.parent == tmp_path / "kernel-elf"
    data = path.read_bytes()
    assert data == wrap_pvh_elf(real_blob)
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    out = subprocess.run(
        ["readelf", "-lnhW", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Machine:                           Advanced Micro Devices X86-64" in out
    assert "Type:                              EXEC (Executable file)" in out
    size = f"0x{len(real_blob.data):06x}"
    assert re.search(rf"LOAD\s+0x001000 0x0+1000000 0x0+1000000 {size} {size} RWE 0x1000", out)
    entry = find_pvh_entry(real_blob.data).to_bytes(8, "little")
    assert re.search(r"Xen\s+0x00000008\s+Unknown note type: \(0x00000012\)", out)
    assert "description data: " + " ".join(f"{b:02x}" for b in entry) in out
