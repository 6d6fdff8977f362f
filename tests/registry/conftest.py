"""Fixtures: three real registries on loopback and the images the tests pull.

Each registry starts once per test module (~0.1 s) and stops, reaped, at its end:
a registry left running as a child of pytest would be seen by later tests that
check for leftover children (tests/test_krun_engine.py). Images are written as
OCI layouts with tests/image_helpers.py and copied in with skopeo.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: image_helpers

from image_helpers import (  # noqa: E402
    LAYER_GZIP,
    LAYER_ZSTD,
    OCI_INDEX,
    E,
    OciWriter,
    config_doc,
    gz,
    make_tar,
    write_oci,
    zst,
)
from registry_helpers import Registry, make_ca_and_cert, need  # noqa: E402


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    need("docker-registry", "skopeo")
    reg = Registry(tmp_path_factory.mktemp("reg-plain")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    need("docker-registry", "skopeo", "htpasswd")
    reg = Registry(tmp_path_factory.mktemp("reg-auth"), basic_auth=True).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    need("openssl")
    return make_ca_and_cert(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, test_ca: tuple[Path, Path, Path]
) -> Iterator[Registry]:
    need("docker-registry", "skopeo")
    _ca, cert, key = test_ca
    reg = Registry(tmp_path_factory.mktemp("reg-tls"), tls=(cert, key)).start()
    yield reg
    reg.stop()


# Layer 1 (gzip) has files the zstd layer 2 removes: a whiteout and an opaque directory.
LOWER = [
    E("etc", kind="dir", mode=0o755),
    E("etc/os-release", data=b"ID=smoltest\n"),
    E("etc/gone", data=b"removed by a whiteout\n"),
    E("opt/d", kind="dir", mode=0o755),
    E("opt/d/a", data=b"a\n"),
    E("opt/d/b", data=b"b\n"),
]
UPPER = [
    E("etc/.wh.gone"),
    E("opt/d/.wh..wh..opq"),
    E("opt/d/c", data=b"c from layer 2\n"),
]
BASE_CONFIG = {"Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/opt/d", "Cmd": ["sh"]}


def arch_layout(root: Path, arches: list[str]) -> Path:
    """An index with one manifest per architecture; each image's /arch names it."""
    w = OciWriter(root)
    descs = []
    for arch in arches:
        layer = gz(make_tar([E("arch", data=arch.encode() + b"\n")]))
        descs.append(
            w.manifest(
                [(layer, LAYER_GZIP)],
                config_doc(arch),
                platform={"os": "linux", "architecture": arch},
            )
        )
    # skopeo copies an index only as the one entry of index.json (a nested index blob).
    nested = w.json_blob({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs},
                         OCI_INDEX)  # fmt: skip
    w.index([nested])
    return root


@dataclass(frozen=True)
class Images:
    base: str  # two layers (gzip, zstd), whiteouts, Env/WorkingDir/Cmd
    multi: str  # index: linux/amd64 + linux/arm64
    arm_only: str  # index with linux/arm64 only
    docker_v2: str  # docker schema 2 manifest (skopeo --format v2s2)


@pytest.fixture(scope="module")
def images(plain_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    tmp = tmp_path_factory.mktemp("layouts")
    base = tmp / "base"
    write_oci(base, [(gz(make_tar(LOWER)), LAYER_GZIP), (zst(make_tar(UPPER)), LAYER_ZSTD)],
              config_doc(**BASE_CONFIG))  # fmt: skip
    v2 = tmp / "v2"
    write_oci(v2, [(gz(make_tar(LOWER)), LAYER_GZIP)], config_doc(Env=["FROM=v2s2"]))
    return Images(
        base=plain_registry.push_layout(base, "smol/base:1"),
        multi=plain_registry.push_layout(
            arch_layout(tmp / "multi", ["amd64", "arm64"]), "smol/multi:1", all_images=True
        ),
        arm_only=plain_registry.push_layout(
            arch_layout(tmp / "arm", ["arm64"]), "smol/armonly:1", all_images=True
        ),
        docker_v2=plain_registry.push_layout(v2, "smol/v2:1", docker_v2=True),
    )
