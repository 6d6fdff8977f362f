"""TLS with a test CA, HTTPS_PROXY / NO_PROXY, and when plain HTTP is allowed.

Covers formats/registry.md "Transport": the system trust store plus
SSL_CERT_FILE, no fallback to HTTP on a certificate error, proxies through a
real CONNECT proxy (a small thread here that records what it tunnels).
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import LAYER_GZIP, E, gz, make_tar, write_oci
from registry_helpers import Registry, base_env, smolpack_cli

from smolpack.registry._reference import plain_http_allowed


@pytest.fixture(scope="module")
def tls_image(tls_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    oci = tmp_path_factory.mktemp("tls") / "oci"
    write_oci(oci, [(gz(make_tar([E("over-tls", data=b"yes\n")])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    return tls_registry.push_layout(oci, "smol/tls:1")


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    tunnels: list[str]


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        assert isinstance(self.server, _Proxy)
        self.server.tunnels.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        socks = [self.request, upstream]
        try:
            while True:
                ready, _, _ = select.select(socks, [], [], 10)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is self.request else self.request).sendall(data)
        finally:
            upstream.close()


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy(("127.0.0.1", 0), _Tunnel)
    server.tunnels = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pull(env: dict[str, str], ref: str, dest: Path) -> tuple[int, str]:
    res = smolpack_cli("image", "unpack", "-q", ref, str(dest), env=env)
    return res.returncode, res.stderr if res.returncode else ""


def test_untrusted_certificate_is_exit_10_without_http_fallback(
    tls_registry: Registry, tls_image: str, tmp_path: Path
) -> None:
    code, err = pull(base_env(tmp_path), tls_image, tmp_path / "root")
    assert code == 10
    assert err.startswith(
        f"Error: registry {tls_registry.host} is unreachable (TLS certificate not trusted: "
    )
    assert len(err.splitlines()) == 1


def test_ssl_cert_file_adds_the_test_ca(
    tls_image: str, test_ca: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    env = {**base_env(tmp_path), "SSL_CERT_FILE": str(test_ca[0])}
    assert pull(env, tls_image, tmp_path / "root") == (0, "")
    assert (tmp_path / "root/over-tls").read_bytes() == b"yes\n"


def test_https_proxy_is_used_and_no_proxy_bypasses_it(
    tls_registry: Registry,
    tls_image: str,
    test_ca: tuple[Path, Path, Path],
    proxy: _Proxy,
    tmp_path: Path,
) -> None:
    env = {
        **base_env(tmp_path),
        "SSL_CERT_FILE": str(test_ca[0]),
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}",
    }
    assert pull(env, tls_image, tmp_path / "via-proxy") == (0, "")
    assert proxy.tunnels and set(proxy.tunnels) == {f"CONNECT {tls_registry.host}"}
    proxy.tunnels.clear()
    env["NO_PROXY"] = "127.0.0.1"
    env["SMOLPACK_CACHE_DIR"] = str(tmp_path / "cache2")
    assert pull(env, tls_image, tmp_path / "direct") == (0, "")
    assert proxy.tunnels == []


def test_plain_http_only_for_loopback_or_listed_registries() -> None:
    assert plain_http_allowed("localhost:5000", {})
    assert plain_http_allowed("127.0.0.1:5000", {})
    assert plain_http_allowed("[::1]:5000", {})
    assert not plain_http_allowed("registry.example:5000", {})
    listed = {"SMOLPACK_INSECURE_REGISTRIES": "registry.example:5000, other.example"}
    assert plain_http_allowed("registry.example:5000", listed)
    assert plain_http_allowed("other.example:443", listed)
    assert not plain_http_allowed("third.example", listed)
