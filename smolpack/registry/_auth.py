"""Create stage, registry: the pieces of registry authentication that need no connection.

Implements formats/registry.md, "Authentication": parsing a `WWW-Authenticate`
challenge, the Basic header, the token request for a Bearer challenge (GET with
Basic credentials or anonymous; POST of a refresh token for an identity token,
OAuth2's refresh-token grant as docker does), reading the token answer, and the
one-line refusals (exit 8). `_client.RegistryClient` sends what these build.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
import urllib.request

from smolpack.errors import ImageError, RegistryUnauthorized
from smolpack.registry._credentials import Credentials, config_path

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
CLIENT_ID = "smolpack"  # OAuth2 client_id sent with a refresh-token grant


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` → ("bearer", {"realm": …, "service": …})."""
    kind, _, rest = header.strip().partition(" ")
    return kind.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def has_password(creds: Credentials | None) -> bool:
    return creds is not None and bool(creds.username or creds.password)


def basic_value(creds: Credentials) -> str:
    pair = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def token_request(
    params: dict[str, str], scope: str, creds: Credentials | None, registry: str
) -> urllib.request.Request:
    """The request that asks the challenge's realm for a token valid for `scope`."""
    realm = params.get("realm")
    if not realm:
        raise RegistryUnauthorized(f"registry {registry}: Bearer challenge has no realm")
    query = {"scope": scope}
    if params.get("service"):
        query["service"] = params["service"]
    if creds is not None and creds.identity_token:
        form = dict(query, grant_type="refresh_token", refresh_token=creds.identity_token,
                    client_id=CLIENT_ID)  # fmt: skip
        return urllib.request.Request(realm, data=urllib.parse.urlencode(form).encode())
    req = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}", method="GET")
    if creds is not None and has_password(creds):
        req.add_unredirected_header("Authorization", basic_value(creds))
    return req


def parse_token(data: bytes, realm: str) -> str:
    """The token from a token service's JSON answer (`token`, or OAuth2's `access_token`)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"token service {realm} did not answer JSON") from None
    token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise ImageError(f"token service {realm} answered without a token")
    return token


def missing_credentials(registry: str) -> RegistryUnauthorized:
    return RegistryUnauthorized(
        f"registry {registry} requires credentials and none were found"
        f" in {config_path()} (docker login {registry})"
    )


def refused(registry: str, creds: Credentials | None) -> RegistryUnauthorized:
    if creds is None:
        return RegistryUnauthorized(
            f"registry {registry} refused anonymous access; log in"
            f" (docker login {registry}) or check the name"
        )
    return RegistryUnauthorized(
        f"registry {registry} rejected the credentials from {config_path()}"
    )
