"""Benchmark: a forwarded port (formats/agent-protocol.md 5.7) in a restored VM (QEMU engine).

Builds one pack (busybox, net = false), runs it once with `-p HOST:8080` and busybox httpd
serving a 64 MiB file from the guest's tmpfs, then measures in that one run, A/B:

- connection setup: connect() to the first byte of a 1-byte HTTP response, through the
  forward (A) vs. to an equivalent server on this host's own loopback (B), median of N;
- throughput: the 64 MiB file through the forward (A) vs. the same bytes as the program's
  stdout over the same agent port (B, `cat` in a second run; stdout is what channels share
  the port with).

    python bench/bench_ports.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
BIG_MIB = 64


def http_get(port: int, path: str) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds to the end, body bytes)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as c:
        c.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(65536)
            if not chunk:
                raise SystemExit(f"bench: no response from port {port}")
            head += chunk
        first = time.perf_counter() - start
        size = len(head.split(b"\r\n\r\n", 1)[1])
        while chunk := c.recv(1 << 20):
            size += len(chunk)
    return first, time.perf_counter() - start, size


class _One(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"x")

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    from e2e_helpers import make_busybox_rootfs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    smolpack = [sys.executable, "-m", "smolpack"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_busybox_rootfs(root / "rootfs", all_applets=True)
        (root / "Smolfile").write_text(
            'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
        )
        pack = root / "bench.smolmachine"
        subprocess.run([*smolpack, "create", "-q", "-o", str(pack), str(root)], env=env, check=True)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve = (
            f"mkdir /tmp/www && echo -n x > /tmp/www/one && dd if=/dev/zero of=/tmp/www/big"
            f" bs=1M count={BIG_MIB} 2>/dev/null && httpd -p 8080 -h /tmp/www && echo ready"
            " && cat >/dev/null"
        )
        proc = subprocess.Popen(
            [*smolpack, "run", "-p", f"{port}:8080", str(pack), "--", serve],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise SystemExit("bench: the guest server did not start")
        local = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _One)
        threading.Thread(target=local.serve_forever, daemon=True).start()
        fwd_setup, host_setup = [], []
        for _ in range(rounds):  # alternate A and B
            fwd_setup.append(http_get(port, "/one")[0])
            host_setup.append(http_get(local.server_address[1], "/one")[0])
        local.shutdown()
        local.server_close()
        _, fwd_total, size = http_get(port, "/big")
        proc.stdin.close()
        proc.wait()
        if size != BIG_MIB << 20:
            raise SystemExit(f"bench: got {size} bytes through the forward")

        start = time.perf_counter()
        dd = f"dd if=/dev/zero bs=1M count={BIG_MIB} 2>/dev/null"
        out = subprocess.run(
            [*smolpack, "run", str(pack), "--", dd],
            stdout=subprocess.PIPE, env=env, check=True,
        )  # fmt: skip
        stdout_total = time.perf_counter() - start  # includes the restore (~0.3 s)
        if len(out.stdout) != BIG_MIB << 20:
            raise SystemExit("bench: short stdout")

    a, b = statistics.median(fwd_setup), statistics.median(host_setup)
    print(f"connection setup, median of {rounds}: forwarded {a * 1e3:.2f} ms,"
          f" host loopback {b * 1e3:.2f} ms, ratio {a / b:.1f}")  # fmt: skip
    fa, fb = BIG_MIB / fwd_total, BIG_MIB / stdout_total
    print(f"{BIG_MIB} MiB: forwarded port {fa:.1f} MiB/s, program stdout (incl. restore)"
          f" {fb:.1f} MiB/s, ratio {fa / fb:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
