"""Shared helpers for the embedding tests and bench/bench_embed.py.

Inputs are built here independently of `smolpack.embed`: a real PyInstaller
onefile stub, payloads with sparse sections, and PyInstaller-style Mach-O
onefiles assembled with plain `struct` the way `PyInstaller.utils.osx` does.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from payload_helpers import make_sparse, sample_manifest

from smolpack.payload import PayloadWriter, SectionKind

REPO = Path(__file__).resolve().parents[1]
MACHO_RUN = REPO / "tests" / "data" / "macho" / "pyinstaller-6.22.3-Darwin-64bit-run"
MiB = 1024 * 1024

# The stub script echoes its arguments, so tests see them pass through the bootloader.
STUB_SCRIPT = 'import sys\nprint("hi", *sys.argv[1:])\n'
# --strip and stdlib excludes, as a real launcher stub is built (shared/design.md section 2).
STUB_ARGS = (
    "--onefile",
    "--strip",
    "--exclude-module=tkinter",
    "--exclude-module=unittest",
    "--exclude-module=pydoc",
)


def env() -> dict[str, str]:
    """Environment for subprocesses: this checkout's smolpack first."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def build_pyinstaller_stub(workdir: Path) -> Path:
    """Build the onefile stub `hi` with PyInstaller (8-40 s); returns its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "hi.py"
    script.write_text(STUB_SCRIPT)
    res = subprocess.run(
        [
            sys.executable, "-m", "PyInstaller", *STUB_ARGS, "--log-level=WARN", "--noconfirm",
            f"--distpath={workdir / 'dist'}", f"--workpath={workdir / 'build'}",
            f"--specpath={workdir}", str(script),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"PyInstaller failed:\n{res.stderr[-3000:]}")
    return workdir / "dist" / "hi"


def write_payload(path: Path, *, disk_size: int, data: bytes = b"") -> Path:
    """A payload with a manifest and a sparse raw `disk` of `disk_size` bytes.

    The disk is a hole except for a superblock, `data` in the middle and a tail.
    """
    disk = path.with_suffix(".disk")
    chunks = {0: b"superblock" * 100, disk_size - 4096: b"tail" * 1024}
    if data:
        chunks[disk_size // 2] = data
    make_sparse(disk, disk_size, chunks)
    with PayloadWriter(path) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest("disk").to_json())
        w.add_file("disk", SectionKind.DISK, disk)
    disk.unlink()
    return path


# -- ELF --------------------------------------------------------------------------------------


def elf_sections(path: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (offset, size, flags) per `readelf -S -W` (binutils, independent of us)."""
    out = subprocess.run(
        ["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout
    result = {}
    for line in out.splitlines():
        if "]" not in line or line.strip().startswith("[Nr]"):
            continue
        fields = line.split("]", 1)[1].split()
        if len(fields) >= 6:
            name, _type, _addr, off, size = fields[:5]
            flags = fields[6] if len(fields) >= 10 else ""
            result[name] = (int(off, 16), int(size, 16), "A" in flags)
    return result


PYI_COOKIE_MAGIC = b"MEI\x0c\x0b\x0a\x0b\x0e"


def cookie_distance_from_end(path: Path) -> int:
    """Bytes between PyInstaller's cookie and the end of the file.

    The bootloader scans backwards from the end for the cookie, so this is
    what every start reads before it finds its archive.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        for back in range(8192, size + 8192, 8192):
            f.seek(max(0, size - back))
            window = f.read(min(back, size))
            at = window.rfind(PYI_COOKIE_MAGIC)
            if at >= 0:
                return len(window) - at
    raise AssertionError(f"no PyInstaller cookie in {path}")


# -- Mach-O -----------------------------------------------------------------------------------

CPU_ARM64, CPU_X86_64 = 0x0100000C, 0x01000007
LC_SYMTAB, LC_SEGMENT_64, LC_CODE_SIGNATURE = 0x2, 0x19, 0x1D


def fat_slices(data: bytes) -> dict[int, bytes]:
    """cputype -> thin image of a universal binary (32-bit fat_arch)."""
    magic, nfat = struct.unpack_from(">II", data)
    assert magic == 0xCAFEBABE
    slices = {}
    for i in range(nfat):
        cputype, _, offset, size, _ = struct.unpack_from(">iiIII", data, 8 + 20 * i)
        slices[cputype] = data[offset : offset + size]
    return slices


def make_fat(slices: list[tuple[int, bytes]]) -> bytes:
    """A universal binary from (cputype, thin image) pairs, slices 16 KiB-aligned."""
    header = struct.pack(">II", 0xCAFEBABE, len(slices))
    body = b""
    offset = 16384
    entries = b""
    for cputype, image in slices:
        entries += struct.pack(">iiIII", cputype, 0, offset, len(image), 14)
        body += image + bytes(-len(image) % 16384)
        offset += len(image) + (-len(image) % 16384)
    head = header + entries
    return head + bytes(16384 - len(head)) + body


def load_commands(image: bytes | bytearray) -> list[tuple[int, int, int]]:
    """(cmd, offset in image, cmdsize) of each load command."""
    ncmds = struct.unpack_from("<I", image, 16)[0]
    pos, result = 32, []
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", image, pos)
        result.append((cmd, pos, size))
        pos += size
    return result


def find_command(image: bytes | bytearray, cmd: int, segname: bytes = b"") -> int:
    for c, pos, _ in load_commands(image):
        if c == cmd and (not segname or image[pos + 8 : pos + 24].rstrip(b"\0") == segname):
            return pos
    raise KeyError(hex(cmd))


def replace_command_id(image: bytes, old: int, new: int) -> bytes:
    """A copy of `image` whose first `old` load command claims to be `new`."""
    out = bytearray(image)
    struct.pack_into("<I", out, find_command(out, old), new)
    return bytes(out)


def remove_signature(image: bytes) -> bytearray:
    """What `codesign --remove-signature` does: drop the command and its bytes."""
    out = bytearray(image)
    pos = find_command(out, LC_CODE_SIGNATURE)
    dataoff = struct.unpack_from("<I", out, pos + 8)[0]
    ncmds, sizeofcmds = struct.unpack_from("<II", out, 16)
    end = 32 + sizeofcmds
    out[pos:end] = out[pos + 16 : end] + bytes(16)
    struct.pack_into("<II", out, 16, ncmds - 1, sizeofcmds - 16)
    del out[dataoff:]
    _set_linkedit_end(out, len(out))
    return out


def _set_linkedit_end(out: bytearray, end: int) -> None:
    pos = find_command(out, LC_SEGMENT_64, b"__LINKEDIT")
    fileoff = struct.unpack_from("<Q", out, pos + 40)[0]
    filesize = end - fileoff
    struct.pack_into("<Q", out, pos + 32, filesize + (-filesize % 16384))  # vmsize
    struct.pack_into("<Q", out, pos + 48, filesize)


def fake_archive(size: int = 200_000) -> bytes:
    """Bytes shaped like a PyInstaller CArchive: data, then the 88-byte cookie."""
    body = os.urandom(size)
    cookie = PYI_COOKIE_MAGIC + struct.pack(">IIII", size + 88, 0, 0, 311)
    return body + cookie + b"libpython3.11.dylib".ljust(64, b"\0")


def pyinstaller_onefile(image: bytes, archive: bytes, *, signed: bool) -> bytes:
    """A macOS onefile as PyInstaller makes one from its bootloader.

    Remove the signature, append the archive, extend LC_SYMTAB's string table
    and __LINKEDIT to the end of the file (PyInstaller.utils.osx.
    fix_exe_for_code_signing), then (signed=True) append an ad-hoc-style
    signature blob as codesign would.
    """
    out = remove_signature(image)
    out += archive
    symtab = find_command(out, LC_SYMTAB)
    stroff = struct.unpack_from("<I", out, symtab + 16)[0]
    struct.pack_into("<I", out, symtab + 20, len(out) - stroff)
    _set_linkedit_end(out, len(out))
    if signed:
        out += bytes(-len(out) % 16)
        blob = struct.pack(">III", 0xFADE0CC0, 4096, 0) + bytes(4096 - 12)
        ncmds, sizeofcmds = struct.unpack_from("<II", out, 16)
        out[32 + sizeofcmds : 32 + sizeofcmds + 16] = struct.pack(
            "<IIII", LC_CODE_SIGNATURE, 16, len(out), len(blob)
        )
        struct.pack_into("<II", out, 16, ncmds + 1, sizeofcmds + 16)
        out += blob
        _set_linkedit_end(out, len(out))
    return bytes(out)
