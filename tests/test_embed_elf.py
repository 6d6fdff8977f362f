"""Embedding into a real PyInstaller onefile ELF stub: it runs, the payload is found.

One PyInstaller build per session (8-40 s); one big sparse payload per module.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from embed_helpers import (
    REPO,
    MiB,
    build_pyinstaller_stub,
    cookie_distance_from_end,
    elf_sections,
    env,
    write_payload,
)
from payload_helpers import allocated

from smolpack.embed import embed_payload
from smolpack.errors import UsageError
from smolpack.payload import RAW_ALIGN, open_payload

BIG_DISK = 384 * MiB
# Embedding in a fresh interpreter, reporting its peak RSS in KiB. Not
# getrusage's ru_maxrss: Linux carries the parent's peak across fork + exec
# (signal->maxrss), so after other tests it reports pytest's peak, not ours.
# VmHWM belongs to the new process image and starts from zero at exec.
EMBED_AND_MEASURE = """
import json, sys
from smolpack.embed import embed_payload
r = embed_payload(sys.argv[1], sys.argv[2], sys.argv[3])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"offset": r.payload_offset, "size": r.size, "maxrss_kib": peak}))
"""


@pytest.fixture(scope="session")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pyinstaller_stub(tmp_path_factory.mktemp("pyinstaller"))


@pytest.fixture(scope="module")
def random_data() -> bytes:
    return hashlib.sha256(b"seed").digest() * (4 * MiB // 32)


@pytest.fixture(scope="module")
def packed(
    stub: Path, tmp_path_factory: pytest.TempPathFactory, random_data: bytes
) -> tuple[Path, dict[str, int]]:
    """The stub with a 384 MiB sparse payload, embedded in a subprocess."""
    d = tmp_path_factory.mktemp("packed")
    payload = write_payload(d / "big.smolmachine", disk_size=BIG_DISK, data=random_data)
    out = d / "tool"
    res = subprocess.run(
        [sys.executable, "-c", EMBED_AND_MEASURE, str(stub), str(payload), str(out)],
        capture_output=True, text=True, env=env(), cwd=REPO, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, json.loads(res.stdout)


def test_packed_stub_still_runs_and_passes_its_arguments(
    packed: tuple[Path, dict[str, int]],
) -> None:
    out, _ = packed
    res = subprocess.run([str(out)], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr
    res = subprocess.run([str(out), "a", "b c"], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, "hi a b c\n"), res.stderr


def test_payload_is_found_and_verifies(
    packed: tuple[Path, dict[str, int]], random_data: bytes
) -> None:
    out, result = packed
    with open_payload(out) as p:
        assert p.location.container == "elf"
        assert p.location.origin == result["offset"]
        assert p.verify() == 2
        offset, size = p.section_file_range("disk")
        assert size == BIG_DISK
    with open(out, "rb") as f:
        f.seek(offset + BIG_DISK // 2)
        assert f.read(len(random_data)) == random_data
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", "verify", str(out)],
        capture_output=True, text=True, env=env(), cwd=REPO, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_section_is_16k_aligned_not_loaded_and_before_pydata(
    packed: tuple[Path, dict[str, int]], stub: Path
) -> None:
    out, result = packed
    sections = elf_sections(out)
    offset, size, alloc = sections[".smolmachine"]
    assert offset == result["offset"] and offset % RAW_ALIGN == 0
    assert not alloc
    with open_payload(out) as p:
        assert size == p.header.payload_size
    pydata_offset, pydata_size, _ = sections["pydata"]
    assert offset + size <= pydata_offset
    # PyInstaller's archive moved intact; the loaded image did not move at all.
    old = elf_sections(stub)
    old_pydata_offset, old_pydata_size, _ = old["pydata"]
    assert pydata_size == old_pydata_size
    stub_bytes = stub.read_bytes()
    with open(out, "rb") as f:
        f.seek(pydata_offset)
        assert (
            f.read(pydata_size) == stub_bytes[old_pydata_offset : old_pydata_offset + pydata_size]
        )
        f.seek(64)
        image_end = old[".comment"][0]  # the first non-loaded section follows the image
        assert f.read(image_end - 64) == stub_bytes[64:image_end]
    for name, (old_offset, old_size, was_alloc) in old.items():
        if was_alloc:
            assert sections[name][:2] == (old_offset, old_size), name


def test_output_is_0755_and_stays_sparse(packed: tuple[Path, dict[str, int]], stub: Path) -> None:
    out, result = packed
    assert out.stat().st_mode & 0o7777 == 0o755
    assert out.stat().st_size == result["size"]
    # 384 MiB of payload, of which ~4 MiB is data.
    assert allocated(out) < stub.stat().st_size + 16 * MiB


def test_embedding_streams_the_payload(packed: tuple[Path, dict[str, int]]) -> None:
    # Peak RSS of the whole embedding process, against a 384 MiB payload:
    # reading it (or the binary) into memory would cost >= 384 MiB.
    _, result = packed
    assert result["maxrss_kib"] < 100 * 1024


def test_start_scan_does_not_grow_with_the_payload(
    packed: tuple[Path, dict[str, int]], stub: Path, tmp_path: Path
) -> None:
    # The bootloader scans backwards from the end of the file for its cookie:
    # what it reads is the distance from the end, which must not change.
    small = embed_payload(
        stub, write_payload(tmp_path / "small.smolmachine", disk_size=MiB), tmp_path / "small"
    )
    big, _ = packed
    distance = cookie_distance_from_end(small.out)
    assert cookie_distance_from_end(big) == distance
    # Past the stub's own: one more section header (64 bytes) and its name.
    assert 0 < distance - cookie_distance_from_end(stub) <= 64 + 16
    assert distance < 64 * 1024


def test_a_packed_stub_is_refused_as_stub(
    packed: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    out, result = packed
    payload = write_payload(tmp_path / "p.smolmachine", disk_size=MiB)
    with pytest.raises(UsageError, match=r"already carries a payload \(ELF section .smolmachine"):
        embed_payload(out, payload, tmp_path / "again")
    assert list(tmp_path.iterdir()) == [payload]


def test_same_inputs_give_the_same_bytes(stub: Path, tmp_path: Path) -> None:
    payload = write_payload(tmp_path / "p.smolmachine", disk_size=8 * MiB, data=b"x" * 5000)
    first = embed_payload(stub, payload, tmp_path / "one")
    second = embed_payload(stub, payload, tmp_path / "two")
    assert first.out.read_bytes() == second.out.read_bytes()
