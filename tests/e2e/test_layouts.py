"""Every pack layout restores the same machine (formats/qemu-state.md, formats/smolmachine.md).

One rootfs, packed once per layout: `lazy` (guest RAM a section of its own, mapped
copy-on-write), `eager` (RAM inside QEMU's migration stream, as packs before issue 14
were), both raw (read in place), and `lazy-zstd` (the default of `smolpack create`: disk
and state compressed, decoded once into the cache). The init step leaves a file in a
tmpfs, so its content lives in guest RAM only: reading it back proves the RAM came back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from e2e_helpers import make_busybox_rootfs, smolpack

from smolpack.build import build_payload
from smolpack.payload import open_payload
from smolpack.payload.layout import Codec
from smolpack.progress import Progress
from smolpack.smolfile import load_smolfile

pytestmark = pytest.mark.vm

LAYOUTS = {
    "lazy": {"lazy_memory": True, "compress": False},
    "eager": {"lazy_memory": False, "compress": False},
    "lazy-zstd": {"lazy_memory": True, "compress": True},
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
        codecs = {payload.sections[s].codec for s in ("disk", *sections)}
    memory = () if name == "eager" else ("qemu-x86_64/memory",)
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
    cached = Path(e2e_env["SMOLPACK_CACHE_DIR"]) / "qemu-memory" / entry.sha256.hex()
    assert _sha(cached) == _sha(tmp_path / "ram")


def _sha(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
