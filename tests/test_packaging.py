"""The wheel carries what a `pip install` user needs: the guest agent's C source.

`smolpack create` compiles the agent for the guest (smolpack/agent/binary.py), so its source
must be package data, found from an installed copy, not only in a source checkout. Builds a
real wheel from a copy of the package (the build backend comes from pip's configured index,
as for any `pip install`), unpacks it where no checkout is on the path, and builds the agent
from there (~4 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT_SOURCE = REPO / "smolpack" / "_guest" / "agent.c"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    # A copy, so the build leaves no build/ or *.egg-info in the checkout.
    ignore = shutil.ignore_patterns("__pycache__", "_stubs", "*.egg-info")
    shutil.copytree(REPO / "smolpack", src / "smolpack", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (built,) = out.glob("smolpack-*.whl")
    return built


def test_wheel_carries_the_agent_source(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("smolpack/_guest/agent.c") == AGENT_SOURCE.read_bytes()


def test_wheel_carries_the_bootloader_patch(wheel: Path) -> None:
    patch = REPO / "smolpack" / "_bootloader" / "keep-runtime.patch"
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("smolpack/_bootloader/keep-runtime.patch") == patch.read_bytes()


def test_an_installed_copy_builds_the_agent(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    script = (
        "import smolpack, sys\n"
        "from smolpack.agent.binary import agent_binary, guest_source_dir\n"
        "print(smolpack.__file__)\n"
        "print(guest_source_dir())\n"
        "print(agent_binary(cache_dir=__import__('pathlib').Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SMOLPACK_CACHE_DIR", None)
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: only the unpacked wheel provides smolpack
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    module, sources, binary = res.stdout.splitlines()
    assert Path(module).is_relative_to(site)
    assert Path(sources) == site / "smolpack" / "_guest"
    assert Path(binary).is_relative_to(tmp_path / "cache" / "agent")
    assert Path(binary).read_bytes()[:4] == b"\x7fELF"
