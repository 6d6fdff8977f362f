"""The launcher's run path imports only what tests/run_path.py lists (as click's test_imports does).

A real run (restore, handshake, program, exit) in a fresh interpreter; every module it loads
beyond the interpreter's own start must be on these lists. A new import on the run path
fails this test until it is added on purpose (tests/run_path.py): each one costs start time
in every packed tool (design.md §5: the launcher's start ≤ 3× a bare Python).
tests/test_run_path_imports.py checks the same lists without a VM, on every test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_path import FORBIDDEN, OTHER_TOP_LEVEL, SMOLPACK_MODULES

from smolpack.runtime_libs import ENV_DIR, find_runtime_libs

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]


SCRIPT = """
import atexit, json, sys
sys.path.insert(0, {repo!r})
base = set(sys.modules)
atexit.register(lambda: print("MODULES", json.dumps(sorted(set(sys.modules) - base))))
from smolpack.launcher import main
main(["echo ran"], pack={pack!r})
"""


def test_run_path_imports_only_the_allowlist(qemu_pack: Path, e2e_env: dict[str, str]) -> None:
    # A packed tool carries its libkrun; point at the installed one so that the lookup
    # for a bare .smolmachine takes the same cheap path (no importlib.metadata).
    env = {**e2e_env, ENV_DIR: str(find_runtime_libs().libkrun_path.parent)}
    res = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT.format(repo=str(REPO), pack=str(qemu_pack))],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.getcwd(),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out, modules_line = res.stdout.rsplit("MODULES ", 1)
    assert out == "ran\n"
    loaded = set(json.loads(modules_line))
    assert {m for m in loaded if m.split(".")[0] == "smolpack"} == SMOLPACK_MODULES
    others = {m.split(".")[0] for m in loaded if not m.startswith(("smolpack", "_"))}
    assert others - OTHER_TOP_LEVEL == set(), "new modules on the run path"
    assert not loaded & FORBIDDEN
