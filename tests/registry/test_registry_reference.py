"""Reference normalization, credential lookup order and the pull platform (no registry needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from smolpack.build import pull_platform
from smolpack.errors import SmolfileError, UsageError
from smolpack.registry import parse_reference
from smolpack.registry._credentials import Credentials, lookup
from smolpack.smolfile import load_smolfile

HUB = "registry-1.docker.io"
A64, B64 = f"sha256:{'a' * 64}", f"sha256:{'b' * 64}"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "target", "endpoint"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", HUB),
        ("python:3.12-alpine", "docker.io", "library/python", "3.12-alpine", HUB),
        ("org/img:1", "docker.io", "org/img", "1", HUB),
        ("index.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", HUB),
        ("ghcr.io/org/img:tag", "ghcr.io", "org/img", "tag", "ghcr.io"),
        ("localhost:5000/x:y", "localhost:5000", "x", "y", "localhost:5000"),
        ("localhost/x", "localhost", "x", "latest", "localhost"),
        (f"img@{A64}", "docker.io", "library/img", A64, HUB),
        (f"r.example/a/b:t@{B64}", "r.example", "a/b", B64, "r.example"),
    ],
)
def test_normalized_like_docker(
    text: str, registry: str, repository: str, target: str, endpoint: str
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.target, ref.endpoint) == (
        registry,
        repository,
        target,
        endpoint,
    )


def test_str_is_the_normalized_reference() -> None:
    assert str(parse_reference("alpine")) == "docker.io/library/alpine:latest"
    digest = f"sha256:{'c' * 64}"
    assert str(parse_reference(f"x/y:1@{digest}")) == f"docker.io/x/y:1@{digest}"


@pytest.mark.parametrize("text", ["Alpine", "x:", "a//b", "img@sha256:short", "-x", ""])
def test_invalid_reference_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_reference(text)
    assert str(exc.value) == f"'{text}' is not a valid image reference (like alpine:3.20)"


def test_docker_hub_credentials_live_under_docker_logins_key(tmp_path: Path) -> None:
    auth = base64.b64encode(b"hubuser:hubpass").decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth},
                              "ghcr.io": {"registrytoken": "tok"}}})
    )  # fmt: skip
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert lookup("docker.io", env) == Credentials(username="hubuser", password="hubpass")
    assert lookup("ghcr.io", env) == Credentials(bearer="tok")
    assert lookup("quay.io", env) is None
    assert lookup("docker.io", {"DOCKER_CONFIG": str(tmp_path / "none")}) is None


def test_pull_platform_is_the_guests_or_oci_platform(tmp_path: Path) -> None:
    def config(extra: str) -> object:
        (tmp_path / "Smolfile").write_text(f'image = "alpine:3.20"\n{extra}')
        return load_smolfile(tmp_path / "Smolfile").packed()

    assert str(pull_platform(config(""))) == "linux/amd64"  # type: ignore[arg-type]
    plat = pull_platform(config('[artifact]\noci_platform = "linux/amd64/v3"\n'))  # type: ignore[arg-type]
    assert str(plat) == "linux/amd64/v3"
    with pytest.raises(SmolfileError) as exc:
        pull_platform(config('[artifact]\noci_platform = "linux/arm64"\n'))  # type: ignore[arg-type]
    assert str(exc.value) == (
        f"{tmp_path}/Smolfile: oci_platform linux/arm64: smolpack builds linux/amd64 guests"
        " (x86_64) only"
    )
