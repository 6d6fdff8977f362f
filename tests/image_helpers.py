"""Build real image inputs from scratch for the image tests.

Tar bytes come from `tarfile`, compression from gzip/zstandard, and OCI layouts
and `docker save` archives are laid out as the specs (and Docker) write them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

MTIME = 1_600_000_000


@dataclass
class E:
    name: str
    kind: str = "file"  # file | dir | sym | link | fifo | chr | blk
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    target: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "link": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def make_tar(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mode = e.mode
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.linkname = e.target
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_doc(arch: str = "amd64", **cfg: Any) -> dict[str, Any]:
    return {"architecture": arch, "os": "linux", "config": cfg, "rootfs": {"type": "layers"}}


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class OciWriter:
    """Blobs written under root/blobs/sha256; returns descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def json_blob(self, doc: Any, media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(doc).encode(), media_type, **extra)

    def manifest(
        self, layers: list[tuple[bytes, str]], config: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.json_blob(config, OCI_CONFIG),
            "layers": [self.blob(data, mt) for data, mt in layers],
        }
        return self.json_blob(doc, OCI_MANIFEST, **extra)

    def index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.root / "index.json").write_text(json.dumps(doc))


def write_oci(
    root: Path, layers: list[tuple[bytes, str]], config: dict[str, Any]
) -> dict[str, Any]:
    w = OciWriter(root)
    desc = w.manifest(layers, config)
    w.index([desc])
    return desc


def tar_dir(src: Path) -> bytes:
    """Tar a directory as `docker save` does (relative names, sorted)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(src.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return buf.getvalue()


def docker_classic(layers: list[bytes], config: dict[str, Any]) -> bytes:
    """A pre-25 `docker save`: <id>/layer.tar, <configdigest>.json, manifest.json."""
    config = dict(config, rootfs={"type": "layers", "diff_ids": [sha(x) for x in layers]})
    cbytes = json.dumps(config).encode()
    cname = sha(cbytes).split(":")[1] + ".json"
    entries = [E(cname, data=cbytes)]
    paths = []
    for i, data in enumerate(layers):
        layer_id = hashlib.sha256(b"v1id%d" % i).hexdigest()
        entries += [E(layer_id, kind="dir", mode=0o755), E(f"{layer_id}/layer.tar", data=data)]
        paths.append(f"{layer_id}/layer.tar")
    manifest = [{"Config": cname, "RepoTags": ["t:latest"], "Layers": paths}]
    entries.append(E("manifest.json", data=json.dumps(manifest).encode()))
    return make_tar(entries)
