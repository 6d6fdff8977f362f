"""Create stage, image → root tree (formats/image-inputs.md).

`prepare_rootfs(image, dest)` turns a rootfs directory, a rootfs tarball, an
OCI image layout, an oci-archive or a `docker save` archive into one merged
root tree and returns the image's defaults (Env, WorkingDir, Entrypoint, Cmd).
"""

from __future__ import annotations

from smolpack.image._config import ImageDefaults
from smolpack.image._locales import image_locales
from smolpack.image._oci import BlobSource
from smolpack.image._resolve import (
    ImageKind,
    detect_kind,
    goarch,
    prepare_rootfs,
    prepare_rootfs_from_source,
)

__all__ = [
    "BlobSource",
    "ImageDefaults",
    "ImageKind",
    "detect_kind",
    "goarch",
    "image_locales",
    "prepare_rootfs",
    "prepare_rootfs_from_source",
]
