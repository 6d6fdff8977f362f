"""Distribution stage: a pack (packed executable or bare `.smolmachine`) as an OCI artifact.

Implements formats/registry.md, "Packs as OCI artifacts". One OCI image
manifest with our `artifactType`, a small JSON config, and exactly one layer:
the pack file's bytes, unchanged, so `pull` writes back the identical file
(same sha256) and makes it executable when it is one. Uploads are monolithic
(POST, then PUT with the digest), which every distribution-spec registry takes;
blobs the repository already has are skipped (HEAD).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolpack import __version__
from smolpack.atomic_file import AtomicFile
from smolpack.errors import (
    ImageError,
    RegistryDigestMismatch,
    RegistryUnreachable,
    SmolpackError,
    UsageError,
)
from smolpack.progress import Progress
from smolpack.registry._blobs import check_digest, sha256_digest
from smolpack.registry._client import Body, RegistryClient
from smolpack.registry._progress import BlobProgress
from smolpack.registry._reference import Reference, parse_reference

ARTIFACT_TYPE = "application/vnd.smolpack.pack.v1"
CONFIG_TYPE = "application/vnd.smolpack.pack.config.v1+json"
EXECUTABLE_TYPE = "application/vnd.smolpack.executable.v1"
SMOLMACHINE_TYPE = "application/vnd.smolpack.smolmachine.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PushResult:
    reference: Reference  # pinned to the manifest digest
    size: int  # bytes of the pack


@dataclass(frozen=True, slots=True, kw_only=True)
class PullResult:
    path: Path
    reference: Reference  # pinned to the manifest digest
    executable: bool


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _pack_kind(path: Path) -> str:
    """`standalone` (a .smolmachine) or the executable container (`elf`, `macho`)."""
    from smolpack.payload.locate import locate

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return locate(fd, str(path)).container
    finally:
        os.close(fd)


def push_pack(path: Path, text: str, *, progress: Progress) -> PushResult:
    """Push the pack at `path` to the registry reference `text` (which must name a tag)."""
    ref = parse_reference(text)
    if ref.digest is not None:
        raise UsageError(f"push to a tag, not a digest: {text}")
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    container = _pack_kind(path)  # NotASmolmachine (exit 111) for anything else
    executable = container != "standalone"
    size = path.stat().st_size
    digest = _file_digest(path)
    layer_type = EXECUTABLE_TYPE if executable else SMOLMACHINE_TYPE
    config = json.dumps(
        {"format": "exe" if executable else "smolmachine", "container": container,
         "file_name": path.name, "size": size, "smolpack_version": __version__},
        sort_keys=True,
    ).encode()  # fmt: skip
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256_digest(config),
                       "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": digest, "size": size,
                        "annotations": {TITLE: path.name}}],
        },
        sort_keys=True,
    ).encode()  # fmt: skip
    client = RegistryClient(ref.registry, ref.endpoint)
    scope = f"repository:{ref.repository}:pull,push"
    _upload(client, ref, scope, digest, Body(path=path), progress, "pack")
    _upload(client, ref, scope, sha256_digest(config), Body(data=config), progress, "config")
    client.request(
        "PUT",
        f"/v2/{ref.repository}/manifests/{ref.tag}",
        scope=scope,
        what=f"{ref}: manifest",
        headers={"Content-Type": OCI_MANIFEST},
        body=Body(data=manifest),
        ok=(201,),
    ).close()
    pinned = Reference(
        registry=ref.registry, repository=ref.repository, tag=ref.tag,
        digest=sha256_digest(manifest),
    )  # fmt: skip
    return PushResult(reference=pinned, size=size)


def _upload(
    client: RegistryClient,
    ref: Reference,
    scope: str,
    digest: str,
    body: Body,
    progress: Progress,
    label: str,
) -> None:
    size = body.size()
    bar = BlobProgress(progress, label, size)
    what = f"{ref}: blob {digest}"
    head = client.request(
        "HEAD", f"/v2/{ref.repository}/blobs/{digest}", scope=scope, what=what, ok=(200, 404)
    )
    head.close()
    if head.status == 200:
        bar.finish(size, cached=True)
        return
    start = client.request(
        "POST", f"/v2/{ref.repository}/blobs/uploads/", scope=scope, what=what, ok=(202,)
    )
    location = start.headers.get("Location")
    start.close()
    if not location:
        raise ImageError(f"{what}: the registry gave no upload location")
    if location.startswith("/"):
        location = client.base_url() + location
    sep = "&" if "?" in location else "?"
    client.request(
        "PUT",
        f"{location}{sep}digest={digest}",
        scope=scope,
        what=what,
        headers={"Content-Type": "application/octet-stream"},
        body=Body(path=body.path, data=body.data, on_read=bar.update),
        ok=(201,),
    ).close()
    bar.finish(size, cached=False)


def pull_pack(text: str, out: Path, *, progress: Progress) -> PullResult:
    """Pull the pack `text` names into `out` (a file path, or a directory to put it in)."""
    ref = parse_reference(text)
    client = RegistryClient(ref.registry, ref.endpoint)
    scope = f"repository:{ref.repository}:pull"
    data, _media = client.get_json(
        f"/v2/{ref.repository}/manifests/{ref.target}",
        scope=scope,
        accept=(OCI_MANIFEST,),
        what=str(ref),
    )
    manifest_digest = sha256_digest(data)
    if ref.digest is not None and manifest_digest != ref.digest:
        raise RegistryDigestMismatch(
            f"{ref}: manifest does not match its digest (read {manifest_digest})"
        )
    layer = _pack_layer(data, ref)
    digest = check_digest(layer.get("digest"), f"{ref}: pack layer")
    size = layer.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"{ref}: pack layer has no size")
    executable = layer.get("mediaType") == EXECUTABLE_TYPE
    if out.is_dir():
        title = (layer.get("annotations") or {}).get(TITLE)
        if not isinstance(title, str) or not title or "/" in title or title in (".", ".."):
            raise UsageError(f"{ref}: the pack has no usable file name; give -o a file path")
        out = out / title
    bar = BlobProgress(progress, Path(out).name, size)
    try:
        with AtomicFile(out) as f:
            h = hashlib.sha256()
            done = 0
            for chunk in _stream(client, ref, digest, scope):
                if done + len(chunk) > size:
                    raise RegistryDigestMismatch(f"{ref}: pack blob is larger than {size} bytes")
                f.pwrite(chunk, done)
                h.update(chunk)
                done += len(chunk)
                bar.update(done)
            read = "sha256:" + h.hexdigest()
            if read != digest or done != size:
                raise RegistryDigestMismatch(
                    f"{ref}: pack blob {digest} does not match its digest (read {read})"
                )
            f.commit(size=size, mode=_file_mode(executable=executable))
    except OSError as err:
        raise UsageError(f"cannot write {out}: {err.strerror}") from None
    bar.finish(size, cached=False)
    pinned = Reference(
        registry=ref.registry, repository=ref.repository, tag=ref.tag, digest=manifest_digest
    )
    return PullResult(path=out, reference=pinned, executable=executable)


def _file_mode(*, executable: bool) -> int:
    """What a plain file (0666) or an executable (0777) gets under the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if executable else 0o666) & ~umask


def _stream(client: RegistryClient, ref: Reference, digest: str, scope: str) -> Any:
    what = f"{ref}: blob {digest}"
    try:
        yield from client.stream(f"/v2/{ref.repository}/blobs/{digest}", scope=scope, what=what)
    except SmolpackError:
        raise
    except (OSError, http.client.HTTPException) as err:
        raise RegistryUnreachable(f"{what}: connection lost ({err})") from None


def _pack_layer(data: bytes, ref: Reference) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{ref}: manifest is not valid JSON") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict) or config.get("mediaType") != CONFIG_TYPE:
        raise ImageError(f"{ref} is not a smolpack pack (an image? use it as a Smolfile image)")
    layers = [d for d in doc.get("layers") or [] if isinstance(d, dict)]
    packs = [d for d in layers if d.get("mediaType") in (EXECUTABLE_TYPE, SMOLMACHINE_TYPE)]
    if len(packs) != 1:
        raise ImageError(f"{ref}: a pack artifact must have exactly one pack layer")
    return packs[0]
