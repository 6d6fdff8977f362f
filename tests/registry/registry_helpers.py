"""A real registry on loopback for the tests (Debian's `docker-registry`, distribution 2.x).

Each `Registry` is one `docker-registry serve` process with a temporary config:
plain, htpasswd basic auth, or TLS with a CA made here by openssl. Images get in
with `skopeo copy` from OCI layouts the tests write (tests/image_helpers.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "smol", "s3cret-pass"


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install docker-registry skopeo"
                    " apache2-utils openssl)")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server cert, server key) for 127.0.0.1, made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                                   "srv.pem"))  # fmt: skip
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=smolpack test CA")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    ssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


class Registry:
    def __init__(
        self,
        root: Path,
        *,
        basic_auth: bool = False,
        tls: tuple[Path, Path] | None = None,
        token: tuple[str, str, str, Path] | None = None,
    ) -> None:
        """`token`: (realm, service, issuer, root cert bundle) for distribution's token auth."""
        self.root = root
        self.basic_auth = basic_auth
        self.tls = tls
        self.token = token
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = [
            "version: 0.1",
            "log:\n  level: error\n  accesslog:\n    disabled: true",
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}",
            f"http:\n  addr: {self.host}",
        ]
        if self.tls:
            config[-1] += f"\n  tls:\n    certificate: {self.tls[0]}\n    key: {self.tls[1]}"
        if self.basic_auth:
            htpasswd = self.root / "htpasswd"
            line = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
            ).stdout.strip()
            htpasswd.write_text(line + "\n")
            config.append(f"auth:\n  htpasswd:\n    realm: smolpack-test\n    path: {htpasswd}")
        if self.token:
            realm, service, issuer, bundle = self.token
            config.append(f"auth:\n  token:\n    realm: {realm}\n    service: {service}\n"
                          f"    issuer: {issuer}\n    rootcertbundle: {bundle}")  # fmt: skip
        cfg = self.root / "config.yml"
        cfg.write_text("\n".join(config) + "\n")
        with (self.root / "registry.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(cfg)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry did not start: {(self.root / 'registry.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def push_layout(self, layout: Path, name: str, *, all_images: bool = False,
                    docker_v2: bool = False) -> str:  # fmt: skip
        """skopeo copy an OCI layout to `name` (repo:tag); returns `host/name`."""
        args = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]
        if all_images:
            args.append("--all")
        if docker_v2:
            args += ["--format", "v2s2"]
        if self.basic_auth:
            args += ["--dest-creds", f"{USER}:{PASSWORD}"]
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(self.root / "skopeo-auth.json")}
        subprocess.run(
            [*args, f"oci:{layout}", f"docker://{self.host}/{name}"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        return f"{self.host}/{name}"

    def blob_file(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def smolpack_cli(
    *args: str, env: dict[str, str], input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolpack", *args],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip


def base_env(tmp: Path) -> dict[str, str]:
    """This checkout first, a private cache and docker config, no proxies from the host."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "ssl_cert_file",
                                "docker_config", "smolpack_insecure_registries")}  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    (tmp / "docker").mkdir(parents=True, exist_ok=True)
    return {**env, "PYTHONPATH": path, "SMOLPACK_CACHE_DIR": str(tmp / "cache"),
            "DOCKER_CONFIG": str(tmp / "docker")}  # fmt: skip
