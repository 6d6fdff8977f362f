"""Create stage, registry: image references, normalized as docker does.

Implements formats/registry.md, "References". `alpine` is
`docker.io/library/alpine:latest`; the first path component is a registry only
when it has a `.` or a `:` or is `localhost` (docker's rule, distribution/reference
`splitDockerDomain`); Docker Hub's API lives at `registry-1.docker.io`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from smolpack.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# docker login stores Docker Hub credentials under this key in config.json
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
ENV_INSECURE = "SMOLPACK_INSECURE_REGISTRIES"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REF = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    # registry as written in the reference (`docker.io`, `ghcr.io`, `localhost:5000`)
    registry: str
    # repository path inside the registry (`library/alpine`)
    repository: str
    # tag; "latest" when neither tag nor digest was given; None for a bare digest
    tag: str | None
    # `sha256:<hex>` when the reference pins one; it wins over the tag
    digest: str | None

    @property
    def endpoint(self) -> str:
        """host[:port] the API is reached at."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What to ask `/manifests/` for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalize `text`; UsageError (one line) when it is not a reference."""
    m = _REF.fullmatch(text)
    if m is None or len(text) > 255 + 128 + 72:
        raise UsageError(f"'{text}' is not a valid image reference (like alpine:3.20)")
    domain, path = m.group("domain"), m.group("path")
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        path = f"{domain}/{path}"  # `library/alpine`: the first part is a namespace
        domain = None
    if domain is None or domain in ("index.docker.io", "registry-1.docker.io"):
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    tag, digest = m.group("tag"), m.group("digest")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=domain, repository=path, tag=tag, digest=digest)


def with_target(ref: Reference, *, digest: str) -> Reference:
    """`ref` pinned to `digest` (the tag is kept for messages)."""
    return Reference(registry=ref.registry, repository=ref.repository, tag=ref.tag, digest=digest)


def plain_http_allowed(endpoint: str, env: dict[str, str] | None = None) -> bool:
    """Loopback registries and those in SMOLPACK_INSECURE_REGISTRIES may speak plain HTTP."""
    host = endpoint.rsplit(":", 1)[0] if not endpoint.endswith("]") else endpoint
    if host in _LOOPBACK:
        return True
    listed = (env if env is not None else os.environ).get(ENV_INSECURE, "")
    names = {item.strip() for item in listed.split(",") if item.strip()}
    return endpoint in names or host in names
