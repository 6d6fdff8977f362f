"""The launcher's run path, up to QEMU's start, imports only what tests/run_path.py lists.

No VM: the pack's kernel and state are not bootable, so the run ends when QEMU refuses them,
after every module of the run path has loaded (the e2e test checks a whole run). Host
resources (ports, ssh-agent, host directories, secrets) load only for a run that has any.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from payload_helpers import REPO, write_fake_pack
from run_path import FORBIDDEN, OTHER_TOP_LEVEL, SMOLPACK_MODULES

from smolpack.runtime_libs import ENV_DIR, find_runtime_libs

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"
)
HOST_RESOURCES = {
    "smolpack.agent.channels",
    "smolpack.host_resources",
    "smolpack.hostdir",
    "smolpack.hostdir.fuse_wire",
    "smolpack.hostdir.node_table",
    "smolpack.hostdir.server",
}

SCRIPT = """
import atexit, json, sys
sys.path.insert(0, {repo!r})
base = set(sys.modules)
atexit.register(lambda: print("MODULES", json.dumps(sorted(set(sys.modules) - base))))
from smolpack.launcher import main
main([{args}"true"], pack={pack!r})
"""


def loaded_by_a_run(pack: Path, tmp_path: Path, *args: str) -> set[str]:
    script = SCRIPT.format(repo=str(REPO), pack=str(pack), args="".join(f"{a!r}, " for a in args))
    env = {
        "PATH": "/usr/bin:/bin",
        "SMOLPACK_ENGINE": "qemu",
        "SMOLPACK_CACHE_DIR": str(tmp_path / "cache"),
        # As in the e2e test: the installed libkrun, found without importlib.metadata.
        ENV_DIR: str(find_runtime_libs().libkrun_path.parent),
    }
    res = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert "QEMU failed to start" in res.stderr, res.stderr
    return set(json.loads(res.stdout.rsplit("MODULES ", 1)[1]))


def test_a_run_that_attaches_nothing_imports_only_the_allowlist(tmp_path: Path) -> None:
    loaded = loaded_by_a_run(write_fake_pack(tmp_path / "t.smolmachine"), tmp_path)
    # Forced QEMU: the planner does not ask krun (auto would, first).
    expected = SMOLPACK_MODULES - {"smolpack.engine.krun_engine"}
    assert {m for m in loaded if m.split(".")[0] == "smolpack"} == expected
    others = {m.split(".")[0] for m in loaded if not m.startswith(("smolpack", "_"))}
    assert others - OTHER_TOP_LEVEL == set(), "new modules on the run path"
    assert not loaded & FORBIDDEN


def test_host_resources_load_for_a_run_that_has_them(tmp_path: Path) -> None:
    pack = write_fake_pack(tmp_path / "t.smolmachine")
    with socket.socket() as probe:  # a port free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loaded = loaded_by_a_run(pack, tmp_path, "--smol-port", f"{port}:80")
    assert HOST_RESOURCES <= loaded
    pack = write_fake_pack(tmp_path / "s.smolmachine", secrets=[["TOKEN", "env", "PATH"]])
    loaded = loaded_by_a_run(pack, tmp_path)
    assert "smolpack.host_resources" in loaded


def test_launcher_options_alone_load_no_engine_interface() -> None:
    # `--smol-version`/`--smol-help` answer before any run: option parsing reads the engine
    # registry for `--smol-engine`'s choices and must not load the interface (typing,
    # socket, pathlib). Was: the engine package's __init__ held it, and `./tool
    # --smol-version` took 111 ms instead of 65 (bench_launcher).
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import smolpack.launcher as l;"
        " l.parse_args(['--smol-version', '--smol-engine=krun'], {});"
        " print(sorted(m for m in sys.modules if m.startswith('smolpack')"
        " or m in ('typing', 'socket', 'pathlib')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(
        ["smolpack", "smolpack.engine", "smolpack.engine.registry", "smolpack.errors",
         "smolpack.launcher"]
    )  # fmt: skip
