"""Writer -> reader round trips: bytes, files, codecs, sparseness, determinism, cleanup."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import pytest
from payload_helpers import allocated, load_generator, make_sparse, sample_manifest

from smolpack.errors import BadLayout, SectionDigestMismatch
from smolpack.payload import Codec, PayloadWriter, SectionKind, open_payload

MiB = 1024 * 1024


def write_basic(path: Path, src_dir: Path) -> dict[str, bytes]:
    """A payload with every codec/source combination; returns name -> raw bytes."""
    kernel = os.urandom(300_000) + bytes(200_000)
    disk_raw = bytearray(7 * MiB)
    disk_raw[MiB : MiB + 5] = b"hello"
    disk_raw[7 * MiB - 3 :] = b"end"
    disk = bytes(disk_raw)
    (src_dir / "kernel").write_bytes(kernel)
    make_sparse(src_dir / "disk", len(disk), {MiB: b"hello", 7 * MiB - 3: b"end"})
    manifest = sample_manifest("qemu/stream")
    with PayloadWriter(path) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
        w.add_file("kernel", SectionKind.KERNEL, src_dir / "kernel", codec=Codec.ZSTD)
        w.add_file("disk", SectionKind.DISK, src_dir / "disk")
        w.add_bytes("qemu/stream", SectionKind.STATE, b"QEVM" * 5000, codec=Codec.ZSTD)
        w.add_bytes("empty", SectionKind.AGENT, b"")
    return {
        "manifest": manifest.to_json(),
        "kernel": kernel,
        "disk": disk,
        "qemu/stream": b"QEVM" * 5000,
        "empty": b"",
    }


def test_round_trip_bytes_and_files(tmp_path: Path) -> None:
    out = tmp_path / "t.smolmachine"
    expected = write_basic(out, tmp_path)
    with open_payload(out) as p:
        assert list(p.sections) == ["manifest", "kernel", "disk", "qemu/stream", "empty"]
        assert p.manifest() == sample_manifest("qemu/stream")
        assert p.verify() == 5
        for name, data in expected.items():
            entry = p.sections[name]
            assert entry.raw_size == len(data)
            assert p.read_section(name) == data
            p.copy_section_to(name, tmp_path / "out.bin")
            assert (tmp_path / "out.bin").read_bytes() == data
        assert p.sections["kernel"].codec == Codec.ZSTD
        assert p.sections["kernel"].stored_size < len(expected["kernel"])
    assert sorted(os.listdir(tmp_path)) == ["disk", "kernel", "out.bin", "t.smolmachine"]


def test_manifest_is_read_once_per_open_payload(tmp_path: Path) -> None:
    out = tmp_path / "t.smolmachine"
    write_basic(out, tmp_path)
    with open_payload(out) as p:
        first = p.manifest()
        reads: list[str] = []
        read_section = p.read_section

        def counting(name: str, **kwargs: int) -> bytes:
            reads.append(name)
            return read_section(name, **kwargs)

        p.read_section = counting  # type: ignore[method-assign]
        assert p.manifest() is first
        assert reads == []


def test_raw_sections_are_16k_aligned_and_mappable(tmp_path: Path) -> None:
    out = tmp_path / "t.smolmachine"
    expected = write_basic(out, tmp_path)
    with open_payload(out) as p:
        offset, size = p.section_file_range("disk")
        assert offset % 16384 == 0 and size == len(expected["disk"])
        with (
            open(out, "rb") as f,
            mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, offset=offset) as m,
        ):
            assert m[MiB : MiB + 5] == b"hello"
            assert hashlib.sha256(m).digest() == p.sections["disk"].sha256
        with pytest.raises(BadLayout, match="section 'kernel' is zstd-compressed"):
            p.section_file_range("kernel")


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write_basic(tmp_path / "a.smolmachine", tmp_path / "a")
    (tmp_path / "b").mkdir()
    # Different kernel bytes come from os.urandom, so reuse a's inputs for b.
    for name in ("kernel", "disk"):
        os.link(tmp_path / "a" / name, tmp_path / "b" / name)
    for target in ("b1", "b2"):
        with PayloadWriter(tmp_path / f"{target}.smolmachine") as w:
            w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
            w.add_file("kernel", SectionKind.KERNEL, tmp_path / "b" / "kernel", codec=Codec.ZSTD)
            w.add_file("disk", SectionKind.DISK, tmp_path / "b" / "disk")
    b1 = (tmp_path / "b1.smolmachine").read_bytes()
    assert b1 == (tmp_path / "b2.smolmachine").read_bytes()


def test_writer_reproduces_the_golden_sample(tmp_path: Path) -> None:
    """The writer and the spec-only assembler in generate.py agree byte for byte."""
    gen = load_generator()
    out = tmp_path / "sample.smolmachine"
    with PayloadWriter(out) as w:
        for name, kind, codec, data in gen.sample_inputs():
            src = tmp_path / "src"
            src.write_bytes(data)
            # Files and bytes must give the same result; use both.
            if codec:
                w.add_file(name, SectionKind[kind.upper()], src, codec=Codec.ZSTD)
            else:
                w.add_bytes(name, SectionKind[kind.upper()], data)
    assert out.read_bytes() == gen.valid_vectors()["sample.smolmachine"]


def test_sparse_input_stays_sparse_and_output_too(tmp_path: Path) -> None:
    make_sparse(tmp_path / "disk", 512 * MiB, {100 * MiB: b"data" * 1000})
    out = tmp_path / "t.smolmachine"
    with PayloadWriter(out) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        w.add_file("disk", SectionKind.DISK, tmp_path / "disk")
    assert allocated(out) < 2 * MiB
    with open_payload(out) as p:
        p.copy_section_to("disk", tmp_path / "disk.out")
    assert os.path.getsize(tmp_path / "disk.out") == 512 * MiB
    assert allocated(tmp_path / "disk.out") < 2 * MiB
    with open(tmp_path / "disk.out", "rb") as f:
        f.seek(100 * MiB)
        assert f.read(4000) == b"data" * 1000


def test_three_gib_sparse_section_streams(tmp_path: Path) -> None:
    """3 GiB logical, ~2 MiB of data: the output stays sparse, the digest is the logical one."""
    size = 3 * 1024 * MiB
    chunks = {0: b"boot" * 256, 2 * 1024 * MiB + 12345: os.urandom(MiB), size - 4: b"tail"}
    make_sparse(tmp_path / "disk", size, chunks)
    expected = hashlib.sha256()
    pos = 0
    zeros = bytes(8 * MiB)
    for offset, data in sorted(chunks.items()):
        gap = offset - pos
        while gap:
            n = min(gap, len(zeros))
            expected.update(zeros[:n])
            gap -= n
        expected.update(data)
        pos = offset + len(data)
    out = tmp_path / "big.smolmachine"
    with PayloadWriter(out) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        entry = w.add_file("disk", SectionKind.DISK, tmp_path / "disk")
    assert entry.sha256 == expected.digest()
    assert entry.raw_size == size
    assert os.path.getsize(out) > size
    assert allocated(out) < 8 * MiB
    with open_payload(out) as p:
        assert p.sections["disk"].sha256 == expected.digest()


def test_copy_with_bad_digest_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "t.smolmachine"
    write_basic(out, tmp_path)
    with open_payload(out) as p:
        kernel_at = p.origin + p.sections["kernel"].offset + 100
        disk_at = p.origin + p.sections["disk"].offset + MiB
    with open(out, "r+b") as f:
        for at in (kernel_at, disk_at):
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))
    before = sorted(os.listdir(tmp_path))
    with open_payload(out) as p:
        for name in ("kernel", "disk"):
            with pytest.raises(SectionDigestMismatch, match=f"section '{name}' digest mismatch"):
                p.copy_section_to(name, tmp_path / "out.bin")
        with pytest.raises(SectionDigestMismatch, match="section 'kernel' digest mismatch"):
            p.verify()
    assert sorted(os.listdir(tmp_path)) == before


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "t.smolmachine"
    out.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), PayloadWriter(out) as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        w.add_file("disk", SectionKind.DISK, tmp_path / "missing")
    assert os.listdir(tmp_path) == ["t.smolmachine"]
    assert out.read_bytes() == b"old"


def test_writer_rejects_bad_and_duplicate_names(tmp_path: Path) -> None:
    with PayloadWriter(tmp_path / "t.smolmachine") as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        for bad in ("", "Disk", "a" * 33, "x/../y", "/abs", "a//b"):
            with pytest.raises(ValueError, match="section name"):
                w.add_bytes(bad, SectionKind.DISK, b"")
        with pytest.raises(ValueError, match="used twice"):
            w.add_bytes("manifest", SectionKind.DISK, b"")
    with open_payload(tmp_path / "t.smolmachine") as p:
        assert list(p.sections) == ["manifest"]
