"""Fixtures for the end-to-end tests: real packs built and run under QEMU (TCG).

A pack is built once per session (the build boots a VM: ~5 s) and every test
restores it in a fresh QEMU. Failing tests keep their run's console in the
pytest output through `--debug`-style stderr, and every test checks that no
QEMU outlives it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import make_busybox_rootfs, qemu_pids, smolpack


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def e2e_env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "SMOLPACK_CACHE_DIR": str(cache_dir)}


@pytest.fixture(scope="session")
def test_pack(tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str]) -> Path:
    """A pack whose init step leaves a file behind; runs `sh -c ...` given as args."""
    root = tmp_path_factory.mktemp("pack")
    make_busybox_rootfs(root / "rootfs")
    (root / "Smolfile").write_text(
        'image = "./rootfs"\n'
        'entrypoint = ["/bin/sh", "-c"]\n'
        'cmd = ["echo default-cmd"]\n'
        'env = ["FROM_SMOLFILE=yes"]\n'
        'workdir = "/root"\n'
        "memory = 256\n"
        'init = ["echo warmed-up > /root/init-was-here", "echo init-output"]\n'
    )
    out = root / "test.smolmachine"
    res = smolpack("create", "-o", str(out), str(root), env=e2e_env)
    assert res.returncode == 0, res.stderr.decode()
    return out


@pytest.fixture(autouse=True)
def no_qemu_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Our QEMUs name files under this session's temp dir (the pack, the run dir).
    marker = str(tmp_path_factory.getbasetemp())
    before = qemu_pids(marker)
    yield
    leaked = qemu_pids(marker) - before
    assert not leaked, f"QEMU processes left running: {sorted(leaked)}"
