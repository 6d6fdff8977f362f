"""Stage: create, Smolfile. Public API of the Smolfile parser (formats/smolfile.md).

config = load_smolfile("examples/hello")      # a file or its directory
image = require_image(config)                 # a local path or a registry reference
packed = config.packed()                      # [artifact] overrides applied
manifest_part = packed.to_dict()              # JSON-able
"""

from __future__ import annotations

from smolpack.smolfile._load import IGNORED_KEYS, SMOLFILE_NAME, load_smolfile
from smolpack.smolfile._model import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    KIND_ARCHIVE,
    KIND_OCI_LAYOUT,
    KIND_REGISTRY,
    KIND_ROOTFS_DIR,
    ArtifactOverrides,
    ImageRef,
    NetworkPolicy,
    PortMapping,
    Secret,
    SmolConfig,
    Volume,
    require_image,
)

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_MEMORY_MIB",
    "IGNORED_KEYS",
    "KIND_ARCHIVE",
    "KIND_OCI_LAYOUT",
    "KIND_REGISTRY",
    "KIND_ROOTFS_DIR",
    "SMOLFILE_NAME",
    "ArtifactOverrides",
    "ImageRef",
    "NetworkPolicy",
    "PortMapping",
    "Secret",
    "SmolConfig",
    "Volume",
    "load_smolfile",
    "require_image",
]
