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
from e2e_helpers import make_busybox_rootfs, qemu_pids, smolpack, vmm_pids

from smolpack.host import hypervisor_status

HV = hypervisor_status()
# Engines the shared e2e tests run under: SMOLPACK_TEST_ENGINES (the nested-KVM lane sets
# "krun"), else QEMU, plus krun where a libkrun guest can run.
ENGINES = [
    e for e in os.environ.get("SMOLPACK_TEST_ENGINES", "qemu,krun" if HV.usable else "qemu")
    .split(",") if e
]  # fmt: skip


@pytest.fixture(
    scope="session",
    params=[pytest.param(e, marks=[pytest.mark.krun] if e == "krun" else []) for e in ENGINES],
)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine a shared test runs under; its packs carry that engine's state only."""
    if request.param == "krun" and not HV.usable:
        pytest.fail(
            f"SMOLPACK_TEST_ENGINES asks for krun, but no libkrun guest runs here: {HV.reason}"
        )
    return str(request.param)


@pytest.fixture(scope="session")
def engine_env(e2e_env: dict[str, str], engine: str) -> dict[str, str]:
    """e2e_env with the engine forced (SMOLPACK_ENGINE: packed tools and `smolpack run`)."""
    return {**e2e_env, "SMOLPACK_ENGINE": engine}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def e2e_env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "SMOLPACK_CACHE_DIR": str(cache_dir)}


def make_test_pack(
    tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str], state: str,
    *flags: str,
) -> Path:  # fmt: skip
    """A pack whose init step leaves a file behind; runs `sh -c ...` given as args."""
    root = tmp_path_factory.mktemp(f"pack-{state}")
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
    cmd = ["create", f"--state={state}", *flags, "-o", str(out), str(root)]
    res = smolpack(*cmd, env=e2e_env, timeout=1200)  # minutes under nested KVM
    assert res.returncode == 0, res.stderr.decode()
    return out


@pytest.fixture(scope="session")
def test_pack(
    tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str], engine: str
) -> Path:
    """The test pack with `engine`'s state only (the shared tests run it under `engine`)."""
    return make_test_pack(tmp_path_factory, e2e_env, engine)


@pytest.fixture(scope="session")
def qemu_pack(tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str]) -> Path:
    """The test pack with QEMU's state only, stored raw (its stream is read in place, where
    the tests of QEMU's own behaviour damage it)."""
    return make_test_pack(tmp_path_factory, e2e_env, "qemu", "--no-compress")


@pytest.fixture(autouse=True)
def no_qemu_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Our QEMUs name files under this session's temp dir (the pack, the run dir).
    marker = str(tmp_path_factory.getbasetemp())
    before = qemu_pids(marker) | vmm_pids("krun", marker)
    yield
    leaked = (qemu_pids(marker) | vmm_pids("krun", marker)) - before
    assert not leaked, f"VMM processes left running: {sorted(leaked)}"
