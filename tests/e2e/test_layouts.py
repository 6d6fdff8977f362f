"""Every pack layout restores the same machine (formats/qemu-state.md, formats/smolmachine.md).

One rootfs, packed once per layout: `refs-zstd` (the default of `smolpack create`: guest
RAM a section of its own, mapped copy-on-write, its page-cache pages stored as references
to disk blocks; disk and state compressed, decoded once into the cache), `refs` (the same,
raw: read in place), `lazy` (RAM without references, spec 1.1) and `eager` (RAM inside
QEMU's migration stream, as packs before issue 14 were), both raw. The init step leaves a
file in a tmpfs, so its content lives in guest RAM only: reading it back proves the RAM came
back; the file it writes to the disk is in the page cache, i.e. a reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from e2e_helpers import make_busybox_rootfs, smolpack

from smolpack.build import build_payload
from smolpack.engine.disk_refs import PAGE, DiskRefs
from smolpack.payload import open_payload
from smolpack.payload.layout import Codec
from smolpack.progress import Progress
from smolpack.smolfile import load_smolfile

pytestmark = pytest.mark.vm

LAYOUTS = {
    "refs": {"lazy_memory": True, "compress": False},
    "refs-zstd": {"lazy_memory": True, "compress": True},
    "lazy": {"lazy_memory": True, "compress": False, "disk_refs": False},
    "eager": {"lazy_memory": False, "compress": False},
}
INIT = "mkdir -p /ram && mount -t tmpfs tmpfs /ram && echo in-ram > /ram/x && echo warm > /root/w"


@pytest.fixture(scope="session")
def layout_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("layouts")
    make_busybox_rootfs(src / "rootfs", all_applets=True)
    (src / "Smolfile").write_text(
        f'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\ninit = ["{INIT}"]\n'
    )
    return src


@pytest.fixture(scope="session", params=sorted(LAYOUTS))
def layout_pack(
    request: pytest.FixtureRequest, layout_src: Path, e2e_env: dict[str, str]
) -> tuple[str, Path]:
    name = request.param
    out = layout_src / f"{name}.smolmachine"
    config = load_smolfile(layout_src / "Smolfile").packed()
    build_payload(config, out, progress=Progress(quiet=True), **LAYOUTS[name])
    return name, out


def run(pack: Path, env: dict[str, str], script: str):  # type: ignore[no-untyped-def]
    return smolpack("run", str(pack), "--", script, env=env)


def test_layout_is_what_was_asked(layout_pack: tuple[str, Path]) -> None:
    name, pack = layout_pack
    with open_payload(pack) as payload:
        sections = payload.manifest().states[0].sections
        codecs = {payload.sections[s].codec for s in ("disk", *sections) if "refs" not in s}
    memory = {"eager": (), "lazy": ("qemu-x86_64/memory",)}.get(
        name, ("qemu-x86_64/memory", "qemu-x86_64/memory-refs")
    )
    assert sections == ("qemu-x86_64/migration", *memory)
    assert codecs == ({Codec.ZSTD} if name.endswith("-zstd") else {Codec.NONE})


def test_ram_and_disk_come_back_and_writes_stay_in_their_run(
    layout_pack: tuple[str, Path], e2e_env: dict[str, str], tmp_path: Path
) -> None:
    _, pack = layout_pack
    res = run(pack, e2e_env, "cat /ram/x /root/w; echo scribbled > /ram/x; exit 3")
    assert (res.returncode, res.stdout) == (3, b"in-ram\nwarm\n"), res.stderr.decode()
    res = run(pack, e2e_env, "cat /ram/x")
    assert res.stdout == b"in-ram\n", res.stderr.decode()
    with open_payload(pack) as payload:
        entry = payload.sections.get("qemu-x86_64/memory")
        if entry is None:
            return
        # lazy: the cached RAM file QEMU mapped is never written
        payload.copy_section_to(entry.name, tmp_path / "ram")
        refs_entry = payload.sections.get("qemu-x86_64/memory-refs")
        if refs_entry is not None:
            blob = payload.read_section(refs_entry.name)
            disk_size = payload.sections["disk"].raw_size
            refs = DiskRefs.decode(blob, image_size=entry.raw_size, disk_size=disk_size, label="r")
            key = hashlib.sha256(b"disk-refs 1\0")
            for name in (entry.name, refs_entry.name, "disk"):
                key.update(payload.sections[name].sha256)
            payload.copy_section_to("disk", tmp_path / "disk")
    root = Path(e2e_env["SMOLPACK_CACHE_DIR"]) / "qemu-memory"
    if refs_entry is None:
        assert _sha(root / entry.sha256.hex()) == _sha(tmp_path / "ram")
        return
    assert refs.pages > 0  # the page cache was stored as references
    # rebuilt from the disk once (here again, independently); never written since
    disk, ram = (tmp_path / "disk").read_bytes(), bytearray((tmp_path / "ram").read_bytes())
    for page, block, count in refs.runs:
        ram[page * PAGE : (page + count) * PAGE] = disk[block * PAGE : (block + count) * PAGE]
    assert _sha(root / key.hexdigest()) == hashlib.sha256(ram).digest()


def _sha(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
