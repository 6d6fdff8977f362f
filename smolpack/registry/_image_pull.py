"""Create stage, registry → image: pull an image into the blob cache, ready to unpack.

Implements formats/registry.md, "Pulling an image". Reference → manifest (an
index is resolved to `linux/<arch>[/<variant>]`) → config → layers, every blob
digest-checked into the cache. The result is a `BlobSource` that looks like a
one-image OCI layout, so the local-image code (`smolpack.image._oci`) unpacks it
with the very same checks (digests again, media types, whiteouts, safe writes).

A digest-pinned reference whose blobs are all cached never touches the network;
a tag needs one manifest request (or, with `--offline`, the digest the tag named
when it was last pulled).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import IO, Any

from smolpack.errors import ImageError, NoPlatformImage, RegistryUnreachable
from smolpack.progress import Progress
from smolpack.registry import _blobs
from smolpack.registry._client import RegistryClient
from smolpack.registry._reference import Reference, parse_reference, with_target

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_MAX_NESTING = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    # OCI GOARCH name: amd64, arm64
    architecture: str
    # e.g. "v8"; None matches any variant
    variant: str | None = None

    def __str__(self) -> str:
        return f"linux/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    # the reference pinned to the top-level manifest digest (index or image)
    reference: Reference
    # digest of the image manifest chosen for the platform
    manifest_digest: str
    # media type of that manifest
    manifest_media_type: str
    # total bytes of the layers as stored (compressed)
    layer_bytes: int

    def source(self) -> CachedImageSource:
        return CachedImageSource(self)


class CachedImageSource:
    """A pulled image seen as an OCI layout (`smolpack.image._oci.BlobSource`)."""

    def __init__(self, image: PulledImage) -> None:
        self.label = str(image.reference)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": image.manifest_media_type, "digest": image.manifest_digest}
            ],
        }
        self._docs = {
            "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
            "index.json": json.dumps(index).encode(),
        }

    def has(self, relpath: str) -> bool:
        if relpath in self._docs:
            return True
        return relpath.startswith("blobs/sha256/") and _blobs.blob_path(relpath[13:]).is_file()

    def open(self, relpath: str) -> IO[bytes]:
        if relpath in self._docs:
            return io.BytesIO(self._docs[relpath])
        return _blobs.blob_path(relpath[13:]).open("rb")


def pull_image(
    text: str, *, platform: Platform, progress: Progress, offline: bool = False
) -> PulledImage:
    """Pull `text` (a registry reference) for `platform` into the cache."""
    ref = parse_reference(text)
    client = RegistryClient(ref.registry, ref.endpoint, offline=offline)
    _blobs.ensure_cache_dir()
    top_digest, data, media = _top_manifest(client, ref)
    pinned = with_target(ref, digest=top_digest)
    digest = top_digest
    for _ in range(_MAX_NESTING + 1):
        doc = _decode(data, f"{ref}: manifest {digest}")
        media = media or doc.get("mediaType")
        if media not in INDEX_TYPES and not (media is None and "manifests" in doc):
            break
        digest, media = _pick(doc, platform, ref)
        data = _manifest_by_digest(client, ref, digest)
    else:
        raise ImageError(f"{ref}: image indexes nest deeper than {_MAX_NESTING} levels")
    if (
        media == "application/vnd.docker.distribution.manifest.v1+prettyjws"
        or doc.get("schemaVersion") == 1
    ):
        raise ImageError(f"{ref}: Docker schema 1 manifests are not supported (re-push the image)")
    media = media or OCI_MANIFEST
    if media not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise ImageError(f"{ref}: manifest {digest} has unsupported media type {media!r}")
    config_desc = doc.get("config")
    if not isinstance(config_desc, dict):
        raise ImageError(f"{ref}: manifest {digest} has no config descriptor")
    layers = [d for d in doc.get("layers") or [] if isinstance(d, dict)]
    config_path = _blobs.fetch_blob(
        client, ref, _blobs.check_digest(config_desc.get("digest"), f"{ref}: config"),
        _size(config_desc), progress=progress, label="config",
    )  # fmt: skip
    _check_config_platform(_decode(config_path.read_bytes(), f"{ref}: config"), platform, ref)
    total = 0
    for number, desc in enumerate(layers, start=1):
        layer_digest = _blobs.check_digest(desc.get("digest"), f"{ref}: layer {number}")
        label = f"layer {number}/{len(layers)} {layer_digest[7:19]}"
        path = _blobs.fetch_blob(
            client, ref, layer_digest, _size(desc), progress=progress, label=label
        )
        total += path.stat().st_size
    if ref.digest is None and not offline:
        _blobs.remember_tag(ref, top_digest)
    return PulledImage(
        reference=pinned, manifest_digest=digest, manifest_media_type=media, layer_bytes=total
    )


def resolve_digest(text: str, *, offline: bool = False) -> str:
    """The top-level manifest digest `text` names now (cheap: one manifest request at most)."""
    ref = parse_reference(text)
    if ref.digest is not None:
        return ref.digest
    client = RegistryClient(ref.registry, ref.endpoint, offline=offline)
    _blobs.ensure_cache_dir()
    digest = _top_manifest(client, ref)[0]
    if not offline:
        _blobs.remember_tag(ref, digest)
    return digest


def _top_manifest(client: RegistryClient, ref: Reference) -> tuple[str, bytes, str | None]:
    """(digest, bytes, media type or None) of what the reference names; cached by digest."""
    if ref.digest is not None:
        return ref.digest, _manifest_by_digest(client, ref, ref.digest), None
    if client.offline:
        digest = _blobs.remembered_tag(ref)
        cached = _blobs.cached_json(digest) if digest else None
        if digest is None or cached is None:
            raise RegistryUnreachable(f"{ref}: not in the cache, and --offline forbids the network")
        return digest, cached, None
    data, media = client.get_json(
        f"/v2/{ref.repository}/manifests/{ref.tag}",
        scope=f"repository:{ref.repository}:pull",
        accept=MANIFEST_ACCEPT,
        what=f"{ref}",
    )
    digest = _blobs.sha256_digest(data)
    _blobs.store_bytes(digest, data, f"{ref}: manifest")
    return digest, data, media if media in MANIFEST_ACCEPT else None


def _manifest_by_digest(client: RegistryClient, ref: Reference, digest: str) -> bytes:
    cached = _blobs.cached_json(digest)
    if cached is not None:
        return cached
    data, _media = client.get_json(
        f"/v2/{ref.repository}/manifests/{digest}",
        scope=f"repository:{ref.repository}:pull",
        accept=MANIFEST_ACCEPT,
        what=f"{ref.name}@{digest}",
    )
    _blobs.store_bytes(digest, data, f"{ref}: manifest {digest}")
    return data


def _pick(index: dict[str, Any], platform: Platform, ref: Reference) -> tuple[str, str | None]:
    """The index entry for `platform`: (digest, media type)."""
    descs = index.get("manifests")
    if not isinstance(descs, list) or not descs:
        raise ImageError(f"{ref}: image index lists no manifests")
    seen: list[str] = []
    for desc in descs:
        if not isinstance(desc, dict):
            continue
        annotations = desc.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        plat: dict[str, Any] = desc["platform"] if isinstance(desc.get("platform"), dict) else {}
        os_name, arch, variant = plat.get("os"), plat.get("architecture"), plat.get("variant")
        if plat:
            seen.append(f"{os_name}/{arch}" + (f"/{variant}" if variant else ""))
        if os_name != "linux" or arch != platform.architecture:
            continue
        if platform.variant is not None and variant not in (None, platform.variant):
            continue
        media = desc.get("mediaType")
        return _blobs.check_digest(desc.get("digest"), f"{ref}: index entry"), (
            media if isinstance(media, str) else None
        )
    found = ", ".join(dict.fromkeys(seen)) or "none"
    raise NoPlatformImage(f"{ref}: no {platform} image in the index (found: {found})")


def _check_config_platform(config: dict[str, Any], platform: Platform, ref: Reference) -> None:
    os_name, arch = config.get("os"), config.get("architecture")
    if os_name not in (None, "linux") or arch not in (None, platform.architecture):
        raise NoPlatformImage(f"{ref}: image is for {os_name}/{arch}, not {platform}")


def _decode(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _size(desc: dict[str, Any]) -> int | None:
    size = desc.get("size")
    return size if isinstance(size, int) and size >= 0 else None
