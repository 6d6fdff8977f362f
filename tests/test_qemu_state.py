"""smolpack.engine.qemu_state: the two QEMU state layouts (formats/qemu-state.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from payload_helpers import make_sparse, sample_manifest

from smolpack.cache import section_file
from smolpack.engine.qemu import QemuMachine, RamFile, RootDisk, ram_file_args
from smolpack.engine.qemu_state import parse_state, run_ram, state_sections
from smolpack.errors import EngineError
from smolpack.payload import Payload, PayloadWriter, SectionKind, StateRef, open_payload
from smolpack.payload.layout import Codec

MIB = 1 << 20


def state(*sections: str) -> StateRef:
    return StateRef(
        name="qemu-x86_64", engine="qemu", host_arch="x86_64", host_os="linux", sections=sections
    )


def test_the_three_layouts_parse() -> None:
    refs = parse_state(state(*state_sections("qemu-x86_64", lazy=True, refs=True)))
    assert (refs.memory, refs.memory_refs) == ("qemu-x86_64/memory", "qemu-x86_64/memory-refs")
    lazy = parse_state(state(*state_sections("qemu-x86_64", lazy=True)))
    assert (lazy.migration, lazy.memory) == ("qemu-x86_64/migration", "qemu-x86_64/memory")
    assert lazy.memory_refs is None
    eager = parse_state(state(*state_sections("qemu-x86_64", lazy=False)))
    assert (eager.migration, eager.memory) == ("qemu-x86_64/migration", None)


@pytest.mark.parametrize(
    "sections",
    [(), ("qemu-x86_64/memory",), ("qemu-x86_64/memory", "qemu-x86_64/migration"),
     ("qemu-x86_64/migration", "qemu-x86_64/memory", "qemu-x86_64/extra"),
     ("qemu-x86_64/migration", "qemu-x86_64/memory-refs"),
     ("other/migration",)],
)  # fmt: skip
def test_other_section_lists_are_an_engine_error(sections: tuple[str, ...]) -> None:
    with pytest.raises(EngineError, match=r"^QEMU state qemu-x86_64 must have sections "):
        parse_state(state(*sections))


def write_pack(path: Path, ram: Path, codec: Codec = Codec.NONE) -> None:
    names = state_sections("qemu-x86_64", lazy=True)
    with PayloadWriter(path) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest(*names).to_json())
        w.add_bytes(names[0], SectionKind.STATE, b"QEVM stream")
        w.add_file(names[1], SectionKind.STATE, ram, codec=codec)


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD])
def test_run_ram_is_the_section_cached_once_by_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: Codec
) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    ram = tmp_path / "ram"
    make_sparse(ram, 4 * MIB, {0: b"boot", 3 * MIB: os.urandom(4096)})
    write_pack(tmp_path / "p.smolmachine", ram, codec)
    with open_payload(tmp_path / "p.smolmachine") as payload:
        parsed = parse_state(payload.manifest().states[0])
        got = run_ram(payload, parsed, memory_mib=4)
        again = run_ram(payload, parsed, memory_mib=4)
        digest = payload.sections["qemu-x86_64/memory"].sha256.hex()
    assert got == again and got is not None
    assert not got.shared  # a run maps it copy-on-write
    assert got.path == (tmp_path / "cache" / "qemu-memory" / digest).resolve()
    assert got.path.read_bytes() == ram.read_bytes()
    assert got.path.stat().st_blocks * 512 < 1 * MIB  # holes stay holes
    # QEMU 7.2 opens mem-path read-write: the owner must be able to, nobody else.
    assert stat.S_IMODE(got.path.stat().st_mode) == 0o600


def test_run_ram_refuses_a_size_other_than_the_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    ram = tmp_path / "ram"
    make_sparse(ram, 4 * MIB, {})
    write_pack(tmp_path / "p.smolmachine", ram)
    with open_payload(tmp_path / "p.smolmachine") as payload:
        parsed = parse_state(payload.manifest().states[0])
        with pytest.raises(EngineError, match=r"holds 4194304 bytes of RAM, the machine has 8 MiB"):
            run_ram(payload, parsed, memory_mib=8)
    assert not (tmp_path / "cache" / "qemu-memory").exists()  # checked before copying


def test_eager_state_has_no_ram_file(tmp_path: Path) -> None:
    parsed = parse_state(state("qemu-x86_64/migration"))
    assert run_ram(None, parsed, memory_mib=4) is None  # type: ignore[arg-type]


def test_ram_file_args_shared_and_private_and_commas() -> None:
    machine = QemuMachine(guest_arch="x86_64", cpus=1, memory_mib=256, kernel=Path("/k"))
    build = ram_file_args(machine, RamFile(path=Path("/w/a,b.ram"), shared=True))
    assert build == [
        "-object",
        "memory-backend-file,id=smolpack.ram,size=256M,mem-path=/w/a,,b.ram,share=on,prealloc=off",
        "-machine",
        "memory-backend=smolpack.ram",
    ]
    run = ram_file_args(machine, RamFile(path=Path("/c/x"), shared=False))
    assert "share=off" in run[1]


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD])
def test_section_file_is_in_place_when_raw_and_cached_when_compressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: Codec
) -> None:
    from smolpack.cache import section_file

    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    data = os.urandom(50_000)
    (tmp_path / "disk").write_bytes(data)
    pack = tmp_path / "p.smolmachine"
    with PayloadWriter(pack) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        w.add_file("disk", SectionKind.DISK, tmp_path / "disk", codec=codec)
    with open_payload(pack) as payload:
        path, offset, size = section_file(payload, "disk", "disk")
        digest = payload.sections["disk"].sha256.hex()
    assert size == len(data)
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(size) == data
    if codec == Codec.NONE:
        assert path == pack.resolve() and offset > 0  # read in place: nothing copied
        assert not (tmp_path / "cache").exists()
    else:
        assert (path, offset) == ((tmp_path / "cache" / "disk" / digest).resolve(), 0)


def write_refs_pack(path: Path, ram: Path, disk: Path, refs: bytes, codec: Codec) -> None:
    names = state_sections("qemu-x86_64", lazy=True, refs=True)
    with PayloadWriter(path) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest(*names).to_json())
        w.add_file("disk", SectionKind.DISK, disk, codec=codec)
        w.add_bytes(names[0], SectionKind.STATE, b"QEVM stream")
        w.add_file(names[1], SectionKind.STATE, ram, codec=codec)
        w.add_bytes(names[2], SectionKind.STATE, refs, codec=Codec.ZSTD)


def run_disk(payload: Payload, tmp_path: Path) -> RootDisk:
    """The run's disk as runner._start_qemu makes it: in place when raw, else cached."""
    path, offset, size = section_file(payload, "disk", "disk")
    in_place = payload.sections["disk"].codec == Codec.NONE
    fd = payload.fileno() if in_place else None
    return RootDisk(path=path, fd=fd, offset=offset, size=size, overlay=tmp_path / "o")


@pytest.mark.parametrize("codec", [Codec.NONE, Codec.ZSTD])
def test_run_ram_fills_pages_that_are_disk_blocks_byte_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: Codec
) -> None:
    from test_disk_refs import make_inputs

    from smolpack.engine.disk_refs import split_image

    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    image, disk, ram = make_inputs(tmp_path)
    refs = split_image(image, disk, tmp_path / "residual")
    write_refs_pack(tmp_path / "p.smolmachine", tmp_path / "residual", disk, refs.encode(), codec)
    with PayloadWriter(tmp_path / "whole.smolmachine") as w:  # the same, without references
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        w.add_file("disk", SectionKind.DISK, disk, codec=codec)
        w.add_file("qemu-x86_64/memory", SectionKind.STATE, image, codec=codec)
    with open_payload(tmp_path / "p.smolmachine") as payload:
        parsed = parse_state(payload.manifest().states[0])
        got = run_ram(payload, parsed, 4, run_disk(payload, tmp_path))
        again = run_ram(payload, parsed, 4, run_disk(payload, tmp_path))
        stored = payload.sections["qemu-x86_64/memory"].stored_size
        allocated = (tmp_path / "p.smolmachine").stat().st_blocks
    assert got is not None and got == again and not got.shared
    assert got.path.parent == (tmp_path / "cache" / "qemu-memory").resolve()
    assert got.path.read_bytes() == ram
    assert stat.S_IMODE(got.path.stat().st_mode) == 0o600
    with open_payload(tmp_path / "whole.smolmachine") as whole:
        if codec == Codec.ZSTD:  # the referenced pages are not stored twice
            assert stored < whole.sections["qemu-x86_64/memory"].stored_size * 0.3
    if codec == Codec.NONE:  # the disk (2 MiB) is in the pack; the RAM's copies are holes
        assert allocated * 512 < (tmp_path / "whole.smolmachine").stat().st_blocks * 512


def test_run_ram_refuses_a_damaged_reference_and_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_disk_refs import make_inputs

    from smolpack.engine.disk_refs import DiskRefs, split_image

    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    image, disk, _ram = make_inputs(tmp_path)
    refs = split_image(image, disk, tmp_path / "residual")
    (page, block, count), *rest = refs.runs
    bad = DiskRefs(refs.image_size, refs.pages_sha256, ((page, block + 3, count), *rest))
    pack = tmp_path / "p.smolmachine"
    write_refs_pack(pack, tmp_path / "residual", disk, bad.encode(), Codec.NONE)
    with open_payload(pack) as payload:
        parsed = parse_state(payload.manifest().states[0])
        damaged = r"^section qemu-x86_64/memory: the disk blocks its references name do not "
        with pytest.raises(EngineError, match=damaged + "match their digest"):
            run_ram(payload, parsed, 4, run_disk(payload, tmp_path))
    assert not any((tmp_path / "cache" / "qemu-memory").iterdir())  # nothing half-made kept
