"""Agent protocol costs without a VM: the real static agent over a socketpair.

Prints: handshake latency, RUN→EXIT latency of `true`, and stdin→stdout throughput through
`cat`. These are the protocol's own costs, the floor under every guest run (no virtio-serial,
no QEMU). Run from the checkout root: python bench/bench_agent_session.py
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from smolpack.agent import protocol as p
from smolpack.agent.binary import agent_binary
from smolpack.agent.session import handshake

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


def main() -> None:
    agent = agent_binary()
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(agent), "--port-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    t0 = time.perf_counter()
    session = handshake(host, 5)
    print(f"first handshake (agent start + HELLO/ACK): {(time.perf_counter() - t0) * 1e3:.2f} ms")
    hs = []
    for _ in range(50):
        t0 = time.perf_counter()
        session.handshake(5)
        hs.append(time.perf_counter() - t0)
    print(f"handshake, median of 50: {statistics.median(hs) * 1e3:.3f} ms")
    null = os.open(os.devnull, os.O_WRONLY)
    lat = []
    for _ in range(50):
        t0 = time.perf_counter()
        session.run(
            p.RunRequest(argv=("true",), env=(PATH,)), stdin_fd=None, stdout_fd=null, stderr_fd=null
        )
        lat.append(time.perf_counter() - t0)
    print(f"RUN `true` → EXIT, median of 50: {statistics.median(lat) * 1e3:.3f} ms")
    size = 64 << 20
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.write_bytes(os.urandom(size))
        fd = os.open(src, os.O_RDONLY)
        t0 = time.perf_counter()
        code = session.run(
            p.RunRequest(argv=("cat",), env=(PATH,)), stdin_fd=fd, stdout_fd=null, stderr_fd=null
        )
        dt = time.perf_counter() - t0
        os.close(fd)
    assert code == 0
    print(f"64 MiB stdin → cat → stdout: {dt:.2f} s, {size / dt / 2**20:.0f} MiB/s")
    os.close(null)
    session.close()
    host.close()
    proc.wait(5)


if __name__ == "__main__":
    main()
