"""Create stage, registry: the blob cache, filled from a registry with every digest checked.

Implements formats/registry.md, "Cache". Blobs (manifests, configs, layers, in
their stored, compressed form) live at `<cache>/blobs/<hex>` keyed by their
sha256, written through `smolpack.cache.cached_file`, so concurrent builds share
one download and nothing half-written is ever published. A blob is hashed while
it streams in and refused (the temp file removed) if its digest or size differs
from the descriptor. Tags are mutable, so `<cache>/registry-tags/<key>` only
remembers which digest a tag named when last pulled (for `--offline`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
from pathlib import Path
from typing import Any

from smolpack.atomic_file import AtomicFile
from smolpack.cache import cache_root, cached_file
from smolpack.errors import ImageError, RegistryDigestMismatch, RegistryUnreachable
from smolpack.progress import Progress
from smolpack.registry._client import RegistryClient
from smolpack.registry._progress import BlobProgress
from smolpack.registry._reference import Reference

BLOB_KIND = "blobs"
_TAG_KIND = "registry-tags"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def blob_path(digest: str) -> Path:
    return cache_root() / BLOB_KIND / digest.removeprefix("sha256:")


def check_digest(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageError(f"{what}: unsupported or malformed digest {digest!r} (want sha256:<hex>)")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_bytes(digest: str, data: bytes, what: str) -> None:
    """Put a document fetched by the caller into the cache, after checking its digest."""
    read = sha256_digest(data)
    if read != digest:
        raise RegistryDigestMismatch(f"{what} does not match its digest {digest} (read {read})")
    cached_file(BLOB_KIND, digest.removeprefix("sha256:"), lambda tmp: tmp.write_bytes(data))


def fetch_blob(
    client: RegistryClient,
    ref: Reference,
    digest: str,
    size: int | None,
    *,
    progress: Progress,
    label: str,
) -> Path:
    """The blob `digest` of `ref`'s repository as a cache file, downloaded if absent."""
    entry = blob_path(digest)
    bar = BlobProgress(progress, label, size)
    if entry.is_file():
        bar.finish(entry.stat().st_size, cached=True)
        return entry
    what = f"{ref}: blob {digest}"

    def produce(tmp: Path) -> None:
        h = hashlib.sha256()
        done = 0
        with tmp.open("wb") as out:
            try:
                for chunk in client.stream(
                    f"/v2/{ref.repository}/blobs/{digest}",
                    scope=f"repository:{ref.repository}:pull",
                    what=what,
                ):
                    done += len(chunk)
                    if size is not None and done > size:
                        raise RegistryDigestMismatch(
                            f"{what} is larger than its descriptor's {size} bytes"
                        )
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(done)
            except (http.client.HTTPException, ConnectionError, TimeoutError) as err:
                raise RegistryUnreachable(
                    f"{what}: connection lost after {done} bytes ({err or type(err).__name__})"
                ) from None
        read = "sha256:" + h.hexdigest()
        if read != digest:
            raise RegistryDigestMismatch(f"{what} does not match its digest (read {read})")
        if size is not None and done != size:
            raise RegistryDigestMismatch(f"{what} is {done} bytes, its descriptor says {size}")

    path = cached_file(BLOB_KIND, digest.removeprefix("sha256:"), produce)
    bar.finish(path.stat().st_size, cached=False)
    return path


def _tag_file(ref: Reference) -> Path:
    key = hashlib.sha256(f"{ref.name}:{ref.tag}".encode()).hexdigest()
    return cache_root() / _TAG_KIND / key


def remember_tag(ref: Reference, digest: str) -> None:
    path = _tag_file(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"reference": str(ref), "digest": digest}).encode()
    with AtomicFile(path) as f:
        f.pwrite(data, 0)
        f.commit(size=len(data), mode=0o644, durable=False)


def remembered_tag(ref: Reference) -> str | None:
    """The digest `ref`'s tag named when it was last pulled, if it was."""
    try:
        doc = json.loads(_tag_file(ref).read_text())
        digest = doc["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) and DIGEST_RE.fullmatch(digest) else None


def cached_json(digest: str) -> bytes | None:
    try:
        return blob_path(digest).read_bytes()
    except FileNotFoundError:
        return None


def ensure_cache_dir() -> None:
    os.makedirs(cache_root() / BLOB_KIND, exist_ok=True)
