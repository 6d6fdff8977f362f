"""Bearer token auth (Docker Hub's flow) against a registry configured for token auth.

The registry (distribution's `auth: token`) trusts tokens signed by a key whose
certificate is in its `rootcertbundle`; the token service here is a small HTTP
thread that signs RS256 JWTs with openssl (no Python crypto dependency). It
grants what is asked except a pull-only scope on `smol/denied`, and records every request.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from image_helpers import LAYER_GZIP, E, gz, make_tar, write_oci
from registry_helpers import Registry, base_env, need, smolpack_cli

SERVICE, ISSUER = "smol-registry", "smol-token-issuer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService(ThreadingHTTPServer):
    key: Path
    cert_der: bytes
    requests: list[tuple[str, str, bool]]  # (scope, service, had Authorization)

    def sign(self, access: list[dict[str, object]]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "", "aud": SERVICE, "exp": now + 600, "nbf": now - 60,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}  # fmt: skip
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(), capture_output=True, check=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{b64url(sig)}"


class _Handler(BaseHTTPRequestHandler):
    server: TokenService

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        scope = query.get("scope", [""])[0]
        self.server.requests.append(
            (scope, query.get("service", [""])[0], "Authorization" in self.headers)
        )
        access = []
        for one in scope.split(" "):
            kind, _, rest = one.partition(":")
            name, _, actions = rest.rpartition(":")
            # smol/denied: only a pusher (skopeo, loading it) gets access
            if kind == "repository" and (name != "smol/denied" or "push" in actions):
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        body = json.dumps({"token": self.server.sign(access)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - OAuth2 refresh-token grant (docker's identitytoken)
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        assert form["grant_type"] == ["refresh_token"]
        self.server.requests.append((form["scope"][0], form["refresh_token"][0], True))
        kind, _, rest = form["scope"][0].partition(":")
        name, _, actions = rest.rpartition(":")
        access = [{"type": kind, "name": name, "actions": actions.split(",")}]
        body = json.dumps({"access_token": self.server.sign(access)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, TokenService]]:
    need("docker-registry", "skopeo", "openssl")
    tmp = tmp_path_factory.mktemp("token")
    key, cert = tmp / "signer.key", tmp / "signer.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=smol token signer"],
                   check=True, capture_output=True)  # fmt: skip
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         check=True, capture_output=True).stdout  # fmt: skip
    service = TokenService(("127.0.0.1", 0), _Handler)
    service.key, service.cert_der, service.requests = key, der, []
    threading.Thread(target=service.serve_forever, daemon=True).start()
    realm = f"http://127.0.0.1:{service.server_address[1]}/token"
    reg = Registry(tmp / "reg", token=(realm, SERVICE, ISSUER, cert)).start()
    yield reg, service
    reg.stop()
    service.shutdown()
    service.server_close()


def test_anonymous_token_flow_and_a_denied_repository(
    token_registry: tuple[Registry, TokenService], tmp_path: Path
) -> None:
    reg, service = token_registry
    oci = tmp_path / "oci"
    write_oci(oci, [(gz(make_tar([E("pub", data=b"public\n")])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    ref = reg.push_layout(oci, "smol/pub:1")
    reg.push_layout(oci, "smol/denied:1")  # skopeo is granted push; our pull will be denied
    service.requests.clear()
    env = base_env(tmp_path)
    res = smolpack_cli("image", "unpack", "-q", ref, str(tmp_path / "root"), env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "root/pub").read_bytes() == b"public\n"
    # one token for the repository's pull scope, asked anonymously, reused for every blob
    assert service.requests == [("repository:smol/pub:pull", SERVICE, False)]
    denied = f"{reg.host}/smol/denied:1"
    res = smolpack_cli("image", "unpack", "-q", denied, str(tmp_path / "no"), env=env)
    assert (res.returncode, res.stderr) == (
        8,
        f"Error: registry {reg.host} refused anonymous access; log in (docker login"
        f" {reg.host}) or check the name\n",
    )


def test_token_is_asked_with_config_credentials(
    token_registry: tuple[Registry, TokenService], tmp_path: Path
) -> None:
    reg, service = token_registry
    oci = tmp_path / "oci"
    write_oci(oci, [(gz(make_tar([E("mine", data=b"x\n")])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    ref = reg.push_layout(oci, "smol/mine:1")
    env = base_env(tmp_path)
    token = base64.b64encode(b"someone:pw").decode()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": token}}})
    )
    service.requests.clear()
    res = smolpack_cli("image", "unpack", "-q", ref, str(tmp_path / "root"), env=env)
    assert res.returncode == 0, res.stderr
    assert service.requests == [("repository:smol/mine:pull", SERVICE, True)]


def test_identity_token_from_a_credential_helper_is_exchanged(
    token_registry: tuple[Registry, TokenService], tmp_path: Path
) -> None:
    reg, service = token_registry
    oci = tmp_path / "oci"
    write_oci(oci, [(gz(make_tar([E("id", data=b"x\n")])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    ref = reg.push_layout(oci, "smol/ident:1")
    env = base_env(tmp_path)
    helper = tmp_path / "bin" / "docker-credential-idtok"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'printf \'{"ServerURL":"%s","Username":"<token>","Secret":"refresh-123"}\''
        ' "$server"\n'
    )
    helper.chmod(0o755)
    env["PATH"] = f"{helper.parent}{os.pathsep}{env['PATH']}"
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credsStore": "idtok"}))
    service.requests.clear()
    res = smolpack_cli("image", "unpack", "-q", ref, str(tmp_path / "root"), env=env)
    assert res.returncode == 0, res.stderr
    assert service.requests == [("repository:smol/ident:pull", "refresh-123", True)]
