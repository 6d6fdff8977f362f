"""The launcher's run path imports only what is listed here (as click's test_imports does).

A real run (restore, handshake, program, exit) in a fresh interpreter; every module it loads
beyond the interpreter's own start must be on these lists. A new import on the run path
fails this test until it is added on purpose: each one costs start time in every packed
tool (design.md §5: the launcher's start ≤ 3× a bare Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.runtime_libs import ENV_DIR, find_runtime_libs

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]

# Our modules on the QEMU run path, exactly.
SMOLPACK_MODULES = {
    "smolpack",
    "smolpack.agent",
    "smolpack.agent.channels",
    "smolpack.agent.protocol",
    "smolpack.agent.session",
    "smolpack.atomic_file",
    "smolpack.cache",
    "smolpack.engine",
    "smolpack.engine.console",
    "smolpack.engine.console_log",
    "smolpack.engine.disk_refs",  # RAM pages rebuilt from the disk (first run of a pack)
    "smolpack.engine.qcow2",
    "smolpack.engine.qemu",
    "smolpack.engine.qemu_compat",
    "smolpack.engine.qemu_state",
    "smolpack.engine.qmp",
    "smolpack.engine.select",
    "smolpack.errors",
    "smolpack.host",
    "smolpack.host_resources",
    "smolpack.hostdir",
    "smolpack.integrity",
    "smolpack.launcher",
    "smolpack.machine",
    "smolpack.pack_libs",
    "smolpack.payload",
    "smolpack.payload._decode",
    "smolpack.payload._sparse",
    "smolpack.payload.layout",
    "smolpack.payload.locate",
    "smolpack.payload.manifest",
    "smolpack.payload.reader",
    "smolpack.payload.writer",
    "smolpack.run_files",
    "smolpack.runner",
    "smolpack.runtime_libs",
    "smolpack.stages",
}
# Other top-level modules it may load (private `_x` accelerators aside, which differ
# between Python versions). ast/dis/inspect/tokenize come with dataclasses.
OTHER_TOP_LEVEL = {
    "array", "ast", "copy", "ctypes", "dataclasses", "dis", "fcntl", "hashlib", "inspect",
    "linecache", "locale", "opcode", "platform", "select", "selectors", "signal", "socket",
    "subprocess", "token", "tokenize", "zstandard",
}  # fmt: skip
# Never on the run path: the build side and heavy stdlib.
FORBIDDEN = {"click", "lief", "PyInstaller", "email", "csv", "importlib.metadata", "tempfile"}

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
