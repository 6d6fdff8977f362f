"""Create stage, registry: credentials from docker's config.json.

Implements formats/registry.md, "Credentials". The file is
`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. For a registry the
lookup order is docker's: `credHelpers[registry]`, then `auths[registry]`
(inline `auth`, `username`/`password`, `identitytoken`, `registrytoken`), then
`credsStore`. Helpers speak docker's credential-helper protocol: run
`docker-credential-<name> get`, write the server name on stdin, read
`{"Username": ..., "Secret": ...}` on stdout; a Username of `<token>` means the
secret is an identity (refresh) token. Nothing here is ever written to disk.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolpack.errors import RegistryUnauthorized
from smolpack.registry._reference import DOCKER_HUB, DOCKER_HUB_AUTH_KEY

_HELPER_TIMEOUT_S = 30.0  # a keychain prompt can take a moment; a hung helper must not


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    # basic-auth user; empty with a token
    username: str = ""
    # basic-auth password
    password: str = ""
    # OAuth2 refresh token (docker's identitytoken) for the token endpoint
    identity_token: str = ""
    # a bearer token to send as is (config.json `registrytoken`)
    bearer: str = ""


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def _keys(registry: str) -> list[str]:
    """The names docker may have stored `registry` under."""
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", "registry-1.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise RegistryUnauthorized(f"{path}: cannot read docker config ({err})") from None
    return doc if isinstance(doc, dict) else {}


def lookup(registry: str, env: dict[str, str] | None = None) -> Credentials | None:
    """Credentials for `registry` (as written in the reference), or None for anonymous."""
    path = config_path(env)
    doc = _load(path)
    helpers = _table(doc, "credHelpers")
    auths = _table(doc, "auths")
    for key in _keys(registry):
        if isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], key, path)
    for key in _keys(registry):
        entry = auths.get(key)
        if isinstance(entry, dict):
            found = _from_entry(entry, key, path)
            if found is not None:
                return found
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, _keys(registry)[0], path)
    return None


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return value if isinstance(value, str) else ""


def _from_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials | None:
    if _text(entry, "registrytoken"):
        return Credentials(bearer=_text(entry, "registrytoken"))
    ident = _text(entry, "identitytoken")
    user, password = _text(entry, "username"), _text(entry, "password")
    if _text(entry, "auth"):
        try:
            user, sep, password = base64.b64decode(_text(entry, "auth")).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise RegistryUnauthorized(f"{path}: auths[{key!r}].auth is not base64 of user:pass")
    if ident:
        return Credentials(username=user, identity_token=ident)
    if user or password:
        return Credentials(username=user, password=password)
    return None  # an empty entry (docker writes one when a helper holds the secret)


def _from_helper(name: str, server: str, path: Path) -> Credentials | None:
    program = f"docker-credential-{name}"
    try:
        res = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise RegistryUnauthorized(
            f"{path} names credential helper '{name}' but {program} is not on PATH"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RegistryUnauthorized(f"{program} get failed for {server}: {err}") from None
    if res.returncode != 0:
        text = (res.stdout or res.stderr).decode(errors="replace").strip()
        if "credentials not found" in text.lower():
            return None  # the helper's documented answer for "nothing stored"
        line = text.splitlines()[-1] if text else f"exit code {res.returncode}"
        raise RegistryUnauthorized(f"{program} get failed for {server}: {line}")
    try:
        doc = json.loads(res.stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise RegistryUnauthorized(f"{program} get printed no Username/Secret JSON") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise RegistryUnauthorized(f"{program} get printed no Username/Secret JSON")
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username=user, password=secret)
