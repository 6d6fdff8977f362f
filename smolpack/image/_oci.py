"""Create stage, image → root tree: OCI image layouts and `docker save` archives.

Implements formats/image-inputs.md, "OCI image layout" and "docker-archive".
Both end in the same plan: one config document plus an ordered list of layer
blobs, each with the digests it must match. Blobs come from a `BlobSource`: a
directory (an OCI layout on disk) or a tar read with random access (a
`docker save` or `oci-archive` file), so no layer is copied before use.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from smolpack.errors import ImageError
from smolpack.image._tar_extract import HashingReader, extract_tar
from smolpack.image._tree_writer import TreeWriter

_JSON_MAX_BYTES = 4 << 20  # manifests and configs are KiBs; refuse anything absurd
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
# Compression is chosen by magic bytes; the media type only has to be a layer.
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)


class BlobSource(Protocol):
    label: str

    def has(self, relpath: str) -> bool: ...

    def open(self, relpath: str) -> IO[bytes]: ...


class DirSource:
    """Files of an OCI layout directory; paths come from validated digests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def has(self, relpath: str) -> bool:
        return (self.root / relpath).is_file()

    def open(self, relpath: str) -> IO[bytes]:
        return (self.root / relpath).open("rb")


class TarSource:
    """Members of an uncompressed archive, opened in place (no copy)."""

    def __init__(self, tf: tarfile.TarFile, label: str) -> None:
        self.label = label
        self._tf = tf
        self._members = {_norm(m.name): m for m in tf.getmembers()}

    def has(self, relpath: str) -> bool:
        m = self._members.get(_norm(relpath))
        return m is not None and (m.isreg() or m.issym() or m.islnk())

    def open(self, relpath: str) -> IO[bytes]:
        member = self._members[_norm(relpath)]
        try:
            fobj = self._tf.extractfile(member)  # resolves in-archive links, never the host's
        except KeyError:
            fobj = None
        if fobj is None:
            raise ImageError(f"{self.label}: {relpath} is not a readable file in the archive")
        return fobj


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRef:
    # path of the layer blob inside the source
    path: str
    # sha256 of the stored (maybe compressed) bytes, when known
    digest: str | None
    # sha256 of the uncompressed tar (config rootfs.diff_ids), when known
    diff_id: str | None
    # byte size from the descriptor, when known
    size: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePlan:
    # the decoded image config document
    config: dict[str, Any]
    # layers, lowest first
    layers: tuple[LayerRef, ...]


def _blob_path(digest: Any, label: str) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ImageError(f"{label}: unsupported or malformed digest {digest!r} (want sha256:<hex>)")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _read_json(src: BlobSource, relpath: str, *, what: str, digest: str | None = None) -> Any:
    if not src.has(relpath):
        raise ImageError(f"{src.label}: {what} is missing ({relpath})")
    with src.open(relpath) as raw:
        reader = HashingReader(raw)
        data = reader.read(_JSON_MAX_BYTES + 1)
    if len(data) > _JSON_MAX_BYTES:
        raise ImageError(f"{src.label}: {what} is larger than {_JSON_MAX_BYTES >> 20} MiB")
    if digest is not None and reader.digest() != digest:
        raise ImageError(f"{src.label}: blob {digest} does not match its digest ({what})")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{src.label}: {what} is not valid JSON") from None


def _pick_manifest(
    src: BlobSource, index: Any, goarch: str, depth: int = 0
) -> tuple[dict[str, Any], str]:
    """Follow (nested) indexes to the manifest for linux/<goarch>."""
    if depth > 4:
        raise ImageError(f"{src.label}: image indexes nest deeper than 4 levels")
    descs = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(descs, list) or not descs:
        raise ImageError(f"{src.label}: image index lists no manifests")
    seen: list[str] = []
    for desc in descs:
        if not isinstance(desc, dict):
            continue
        plat = desc.get("platform")
        if isinstance(plat, dict):
            found = f"{plat.get('os')}/{plat.get('architecture')}"
            if (plat.get("os"), plat.get("architecture")) != ("linux", goarch):
                seen.append(found)
                continue
        annotations = desc.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        digest = desc.get("digest")
        path = _blob_path(digest, src.label)
        if not src.has(path) and len(descs) > 1:
            continue  # docker save keeps only the platforms it has; try the next
        doc = _read_json(src, path, what=f"manifest {digest}", digest=digest)
        media = desc.get("mediaType") or (doc.get("mediaType") if isinstance(doc, dict) else None)
        if media in INDEX_TYPES or (media is None and isinstance(doc, dict) and "manifests" in doc):
            return _pick_manifest(src, doc, goarch, depth + 1)
        if media not in MANIFEST_TYPES and media is not None:
            raise ImageError(f"{src.label}: manifest {digest} has unsupported media type {media!r}")
        if not isinstance(doc, dict):
            raise ImageError(f"{src.label}: manifest {digest} is not a JSON object")
        return doc, str(digest)
    found = ", ".join(sorted(set(seen))) or "none"
    raise ImageError(f"{src.label}: no linux/{goarch} image in the index (found: {found})")


def plan_oci(src: BlobSource, goarch: str) -> ImagePlan:
    """OCI image layout: oci-layout + index.json → manifest → config + layers."""
    if not src.has("oci-layout"):
        raise ImageError(f"{src.label}: OCI layout has no oci-layout file")
    if not src.has("index.json"):
        raise ImageError(f"{src.label}: OCI layout has no index.json")
    index = _read_json(src, "index.json", what="index.json")
    manifest, mdigest = _pick_manifest(src, index, goarch)
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict):
        raise ImageError(f"{src.label}: manifest {mdigest} has no config descriptor")
    cdigest = cdesc.get("digest")
    config = _read_json(src, _blob_path(cdigest, src.label), what="image config", digest=cdigest)
    layers: list[LayerRef] = []
    for desc in manifest.get("layers") or []:
        if not isinstance(desc, dict):
            raise ImageError(f"{src.label}: manifest {mdigest} has a malformed layer descriptor")
        digest = desc.get("digest")
        path = _blob_path(digest, src.label)
        media = desc.get("mediaType")
        if media not in LAYER_TYPES:
            raise ImageError(f"{src.label}: layer {digest} has unsupported media type {media!r}")
        size = desc.get("size")
        layers.append(
            LayerRef(
                path=path,
                digest=str(digest),
                diff_id=None,
                size=size if isinstance(size, int) else None,
            )
        )
    return ImagePlan(config=_as_dict(config, src.label), layers=tuple(layers))


def plan_docker_archive(src: BlobSource, goarch: str) -> ImagePlan:
    """`docker save` tar: manifest.json → Config + Layers (classic or OCI-embedded)."""
    entries = _read_json(src, "manifest.json", what="manifest.json")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise ImageError(f"{src.label}: manifest.json lists no images")
    entry: dict[str, Any] | None = None
    config: Any = None
    for candidate in entries:
        cpath = candidate.get("Config") if isinstance(candidate, dict) else None
        if not isinstance(cpath, str):
            raise ImageError(f"{src.label}: manifest.json entry has no Config")
        config = _read_json(src, cpath, what=f"image config {cpath}", digest=_addressed(cpath))
        arch = config.get("architecture") if isinstance(config, dict) else None
        if len(entries) == 1 or arch in (None, goarch):
            entry = candidate
            break
    if entry is None:
        raise ImageError(f"{src.label}: no linux/{goarch} image in manifest.json")
    paths = entry.get("Layers")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ImageError(f"{src.label}: manifest.json entry has no Layers list")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(paths):
        diff_ids = [None] * len(paths)
    layers = []
    for path, diff_id in zip(paths, diff_ids, strict=True):
        if not src.has(path):
            raise ImageError(f"{src.label}: layer {path} is missing from the archive")
        layers.append(
            LayerRef(
                path=path,
                digest=_addressed(path),
                diff_id=diff_id if isinstance(diff_id, str) else None,
                size=None,
            )
        )
    return ImagePlan(config=_as_dict(config, src.label), layers=tuple(layers))


def _addressed(path: str) -> str | None:
    """The digest a content-addressed archive path implies (blobs/sha256/<hex>, <hex>.json)."""
    m = re.fullmatch(r"(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)", _norm(path))
    return f"sha256:{m.group(1) or m.group(2)}" if m else None


def _as_dict(config: Any, label: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ImageError(f"{label}: image config is not a JSON object")
    return config


def apply_layers(src: BlobSource, plan: ImagePlan, writer: TreeWriter) -> None:
    """Extract every layer in order, checking each digest as its bytes are read."""
    for layer in plan.layers:
        name = layer.digest or layer.path
        label = f"{src.label}: layer {name}"
        if not src.has(layer.path):
            raise ImageError(f"{src.label}: blob {name} is missing")
        writer.begin_layer()
        with src.open(layer.path) as raw:
            stored = HashingReader(raw)
            try:
                plain_digest = extract_tar(stored, writer, label=label, layer=True)
            except ImageError:
                # A damaged blob usually shows as a broken tar; name the root cause.
                stored.drain()
                _check_digest(src, layer, stored)
                raise
            stored.drain()
        _check_digest(src, layer, stored)
        if layer.size is not None and stored.size != layer.size:
            raise ImageError(
                f"{src.label}: blob {name} is {stored.size} bytes, descriptor says {layer.size}"
            )
        if layer.diff_id is not None and plain_digest != layer.diff_id:
            raise ImageError(
                f"{src.label}: layer {name} does not match its diff_id {layer.diff_id}"
                f" (read {plain_digest})"
            )


def _check_digest(src: BlobSource, layer: LayerRef, stored: HashingReader) -> None:
    if layer.digest is not None and stored.digest() != layer.digest:
        raise ImageError(
            f"{src.label}: blob {layer.digest} does not match its digest (read {stored.digest()})"
        )
