"""Credentials from docker's config.json against a registry with htpasswd basic auth.

Covers formats/registry.md "Credentials": inline `auth`, `credHelpers` and
`credsStore` through a real `docker-credential-*` program on PATH (a small
script speaking docker's helper protocol), and exit 8 without or with wrong
credentials.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from image_helpers import LAYER_GZIP, E, gz, make_tar, write_oci
from registry_helpers import PASSWORD, USER, Registry, base_env, smolpack_cli


@pytest.fixture(scope="module")
def private_image(auth_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    oci = tmp_path_factory.mktemp("private") / "oci"
    layer = gz(make_tar([E("secret", data=b"behind basic auth\n")]))
    write_oci(oci, [(layer, LAYER_GZIP)], {"architecture": "amd64", "os": "linux"})
    return auth_registry.push_layout(oci, "team/private:1")


def write_config(env: dict[str, str], doc: dict[str, object]) -> Path:
    path = Path(env["DOCKER_CONFIG"]) / "config.json"
    path.write_text(json.dumps(doc))
    return path


def fake_helper(bin_dir: Path, name: str, *, user: str, secret: str, log: Path) -> None:
    """docker-credential-NAME: `get` reads the server on stdin, prints the JSON answer."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    if user:
        answer = (
            f'printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\' "$server"'
        )
    else:
        answer = "echo 'credentials not found in native keychain'; exit 1"
    script.write_text(
        f'#!/bin/sh\n[ "$1" = get ] || exit 1\nread server\necho "$server" >> {log}\n{answer}\n'
    )
    script.chmod(0o755)


def pull(env: dict[str, str], ref: str, dest: Path) -> tuple[int, str]:
    res = smolpack_cli("image", "unpack", "-q", ref, str(dest), env=env)
    if res.returncode == 0:  # the one success line names what was unpacked
        assert res.stderr.startswith(f"unpacked registry image {ref}@sha256:"), res.stderr
        return 0, ""
    return res.returncode, res.stderr


def test_without_credentials_is_exit_8(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    code, err = pull(env, private_image, tmp_path / "root")
    assert (code, err) == (
        8,
        f"Error: registry {auth_registry.host} requires credentials and none were found in"
        f" {env['DOCKER_CONFIG']}/config.json (docker login {auth_registry.host})\n",
    )
    assert not (tmp_path / "root").exists()


def test_inline_auth_and_wrong_password(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    write_config(env, {"auths": {auth_registry.host: {"auth": token}}})
    assert pull(env, private_image, tmp_path / "ok") == (0, "")
    assert (tmp_path / "ok/secret").read_bytes() == b"behind basic auth\n"
    bad = base64.b64encode(f"{USER}:wrong".encode()).decode()
    path = write_config(env, {"auths": {auth_registry.host: {"auth": bad}}})
    assert pull(env, private_image, tmp_path / "bad") == (
        8,
        f"Error: registry {auth_registry.host} rejected the credentials from {path}\n",
    )


@pytest.mark.parametrize("where", ["credHelpers", "credsStore"])
def test_credential_helper_program(
    auth_registry: Registry, private_image: str, tmp_path: Path, where: str
) -> None:
    env = base_env(tmp_path)
    log = tmp_path / "helper.log"
    fake_helper(tmp_path / "bin", "smoltest", user=USER, secret=PASSWORD, log=log)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    # docker writes an empty auths entry beside a helper; it must not hide the helper
    doc: dict[str, object] = {"auths": {auth_registry.host: {}}}
    doc[where] = {auth_registry.host: "smoltest"} if where == "credHelpers" else "smoltest"
    write_config(env, doc)
    assert pull(env, private_image, tmp_path / "root") == (0, "")
    assert (tmp_path / "root/secret").exists()
    assert log.read_text() == f"{auth_registry.host}\n"  # asked once, for this registry


def test_helper_without_an_entry_means_no_credentials(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    fake_helper(tmp_path / "bin", "empty", user="", secret="", log=tmp_path / "log")
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    write_config(env, {"credsStore": "empty"})
    code, err = pull(env, private_image, tmp_path / "root")
    assert code == 8 and "requires credentials and none were found" in err


def test_missing_helper_program_is_one_line(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    path = write_config(env, {"credHelpers": {auth_registry.host: "nosuch"}})
    assert pull(env, private_image, tmp_path / "root") == (
        8,
        f"Error: {path} names credential helper 'nosuch' but docker-credential-nosuch"
        " is not on PATH\n",
    )
