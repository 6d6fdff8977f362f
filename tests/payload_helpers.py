"""Shared helpers for the payload tests: sample inputs and the vector generator."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from smolpack.payload import Manifest, StateRef

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "formats" / "vectors" / "smolmachine"


def load_generator() -> ModuleType:
    """formats/vectors/smolmachine/generate.py as a module (it is not a package)."""
    name = "smolmachine_vectors_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, VECTORS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sample_manifest(*sections: str) -> Manifest:
    return Manifest(
        smolpack_version="0.1.0",
        created="2026-11-22T00:00:00Z",
        guest_arch="x86_64",
        machine={"memory_mib": 256},
        states=(
            (
                StateRef(
                    name="qemu-x86_64",
                    engine="qemu",
                    host_arch="x86_64",
                    host_os="linux",
                    sections=tuple(sections),
                ),
            )
            if sections
            else ()
        ),
    )


def make_sparse(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    """A file of `size` bytes that is a hole except for `chunks` (offset -> data)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)


def allocated(path: Path) -> int:
    """Bytes actually allocated on disk."""
    return os.stat(path).st_blocks * 512


def write_fake_pack(
    path: Path,
    *,
    disk: bytes = b"smolpack test disk\n" * 64,
    recorded: dict[str, str] | None = None,
    **machine: object,
) -> Path:
    """A well-formed pack with a real machine config whose kernel, disk and state are not
    bootable: for launcher paths that stop before a VM starts (info, integrity, errors).
    `recorded`: what its QEMU state says about the QEMU that saved it (none by default)."""
    from smolpack.payload import PayloadWriter, SectionKind
    from smolpack.payload.layout import Codec

    manifest = Manifest(
        smolpack_version="0.1.0",
        created="2026-11-23T00:00:00Z",
        guest_arch="x86_64",
        machine={
            "cpus": 1,
            "memory_mib": 256,
            "net": False,
            "entrypoint": ["/bin/sh", "-c"],
            "cmd": ["echo hi"],
            "env": ["PATH=/bin"],
            "workdir": "/root",
            "kernel_cmdline": "console=hvc0",
            **machine,
        },  # fmt: skip
        states=(
            StateRef(
                name="qemu-x86_64",
                engine="qemu",
                host_arch="x86_64",
                host_os="linux",
                sections=("qemu-x86_64/migration",),
                recorded=recorded or {},
            ),  # fmt: skip
        ),
    )
    with PayloadWriter(path) as writer:
        writer.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
        writer.add_bytes("kernel", SectionKind.KERNEL, b"not a kernel\n" * 100, codec=Codec.ZSTD)
        writer.add_bytes("disk", SectionKind.DISK, disk)
        writer.add_bytes("qemu-x86_64/migration", SectionKind.STATE, b"not a state\n")
    return path
