"""Create stage, registry: images from OCI registries, and packs to and from them.

Implements formats/registry.md. Create-side only: the launcher never imports
this package (a packed tool never talks to a registry).
"""

from __future__ import annotations

from smolpack.registry._image_pull import Platform, PulledImage, pull_image, resolve_digest
from smolpack.registry._pack_artifact import PullResult, PushResult, pull_pack, push_pack
from smolpack.registry._reference import Reference, parse_reference

__all__ = [
    "Platform",
    "PulledImage",
    "PullResult",
    "PushResult",
    "Reference",
    "parse_reference",
    "pull_image",
    "pull_pack",
    "push_pack",
    "resolve_digest",
]
