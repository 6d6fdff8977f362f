"""The guest kernel: taken from libkrunfw, wrapped as a PVH ELF for QEMU (create + run stages).

One kernel for both engines keeps guests identical: libkrun loads libkrunfw's raw image
directly; QEMU cannot, so we wrap the very same bytes in a minimal ELF that QEMU's
`-kernel` loader boots through PVH (`-M microvm,acpi=off`). x86_64 guests only: an arm64
libkrunfw ships an `Image`, which QEMU boots as is.

The ELF we write (all integers little-endian; offsets from the start of the file):

    0x000  ELF64 header (64 bytes), e_type ET_EXEC, e_machine EM_X86_64 (62),
           e_entry = the PVH entry, e_phoff 64, e_phnum 2
    0x040  phdr[0] PT_NOTE  offset 0xb0, size 24, align 4
    0x078  phdr[1] PT_LOAD  offset 0x1000, vaddr = paddr = load_addr,
           filesz = memsz = len(blob), flags RWX, align 0x1000
    0x0b0  note: namesz 4, descsz 8, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\\0",
           entry as u64 (the kernel's own note uses descsz 8 too)
    0x1000 the blob, byte for byte

No section headers: QEMU's loader needs only program headers.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from smolpack.cache import cached_file
from smolpack.errors import HostError
from smolpack.runtime_libs import RuntimeLibs, load_libkrunfw

# Bump when the bytes wrap_pvh_elf writes change: it is part of the cache key.
WRAPPER_VERSION = 1

XEN_ELFNOTE_PHYS32_ENTRY = 18
EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
PAGE = 0x1000

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
_NOTE_OFFSET = _EHDR.size + 2 * _PHDR.size  # 0xb0
_NOTE_SIZE = _NHDR.size + 4 + 8  # header + "Xen\0" + u64 entry = 24
_BLOB_OFFSET = PAGE  # p_offset % align must equal p_vaddr % align; load_addr is page-aligned
# The kernel's note header as it sits in the image: descsz is 4 or 8 depending on version.
_NOTE_RE = re.compile(
    re.escape(struct.pack("<I", 4))
    + b"(?:\x04|\x08)\x00\x00\x00"
    + re.escape(struct.pack("<I", XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\x00"),
)
_LINUX_BANNER_RE = re.compile(rb"Linux version (\S+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelBlob:
    """The raw guest kernel exactly as libkrunfw hands it to libkrun."""

    # the image bytes (copied out of the library)
    data: bytes
    # guest-physical address the image is loaded at (0x1000000 on x86_64)
    load_addr: int
    # guest-physical 64-bit entry libkrun jumps to (not the PVH entry)
    entry_addr: int
    # Linux release from the image's banner, e.g. "6.18.55"; "unknown" if absent
    version: str
    # krunfw_get_version(): libkrunfw's ABI version (5), not the kernel's
    abi_version: int

    def digest(self) -> str:
        """sha256 hex of the image bytes and load address (the wrapper's input)."""
        h = hashlib.sha256(self.data)
        h.update(struct.pack("<Q", self.load_addr))
        return h.hexdigest()


def extract_kernel(libs: RuntimeLibs) -> KernelBlob:
    """Copy the guest kernel out of libkrunfw."""
    lib = load_libkrunfw(libs)
    load_addr, entry_addr, size = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_size_t()
    pointer = lib.krunfw_get_kernel(
        ctypes.byref(load_addr), ctypes.byref(entry_addr), ctypes.byref(size)
    )
    if not pointer or size.value == 0:
        raise HostError(f"{libs.libkrunfw_path} returned no kernel", hint="reinstall smolmachines")
    # string_at copies: the pointer is libkrunfw's own memory.
    data = ctypes.string_at(pointer, size.value)
    banner = _LINUX_BANNER_RE.search(data)
    return KernelBlob(
        data=data,
        load_addr=load_addr.value,
        entry_addr=entry_addr.value,
        version=banner.group(1).decode("ascii", "replace") if banner else "unknown",
        abi_version=int(lib.krunfw_get_version()),
    )


def find_pvh_entry(data: bytes) -> int:
    """The 32-bit guest-physical PVH entry from the XEN_ELFNOTE_PHYS32_ENTRY note in `data`.

    Raises `HostError` if there is none (a kernel built without CONFIG_PVH).
    """
    for match in _NOTE_RE.finditer(data):
        descsz = _NHDR.unpack_from(data, match.start())[1]
        desc = match.end()
        if desc + descsz > len(data):
            continue
        # The entry is a 32-bit physical address even when stored in 8 bytes.
        entry = int.from_bytes(data[desc : desc + descsz], "little")
        if 0 < entry < 1 << 32:
            return entry
    raise HostError(
        "guest kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), QEMU cannot boot it",
        hint="use a libkrunfw whose kernel is built with CONFIG_PVH=y",
    )


def wrap_pvh_elf(blob: KernelBlob) -> bytes:
    """A minimal ELF64 executable that maps `blob` at its load address with a PVH note."""
    if blob.load_addr % PAGE:
        raise ValueError(f"kernel load address {blob.load_addr:#x} is not page-aligned")
    entry = find_pvh_entry(blob.data)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT, SYSV
    ehdr = _EHDR.pack(
        ident,
        2,  # e_type ET_EXEC
        EM_X86_64,
        1,  # e_version
        entry,  # e_entry: QEMU's PVH path ignores it; the PVH entry is the honest value
        _EHDR.size,  # e_phoff
        0,  # e_shoff: no section headers
        0,  # e_flags
        _EHDR.size,  # e_ehsize
        _PHDR.size,  # e_phentsize
        2,  # e_phnum
        0,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    note_phdr = _PHDR.pack(PT_NOTE, PF_R, _NOTE_OFFSET, 0, 0, _NOTE_SIZE, _NOTE_SIZE, 4)
    size = len(blob.data)
    load_phdr = _PHDR.pack(
        PT_LOAD, PF_R | PF_W | PF_X, _BLOB_OFFSET, blob.load_addr, blob.load_addr, size, size, PAGE
    )
    note = _NHDR.pack(4, 8, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\x00" + struct.pack("<Q", entry)
    head = ehdr + note_phdr + load_phdr + note
    return head + bytes(_BLOB_OFFSET - len(head)) + blob.data


def kernel_elf_path(blob: KernelBlob, *, root: Path | None = None) -> Path:
    """The PVH ELF for `blob` in the cache, written on first use (keyed by content)."""
    key = hashlib.sha256(f"pvh-elf-v{WRAPPER_VERSION}:{blob.digest()}".encode()).hexdigest()
    return cached_file(
        "kernel-elf", key, lambda tmp: tmp.write_bytes(wrap_pvh_elf(blob)), root=root
    )
