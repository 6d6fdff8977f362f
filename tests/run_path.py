"""What the launcher's run path may import: the allowlist of tests/e2e/test_launcher_imports.py
(a real run) and tests/test_run_path_imports.py (a run that stops at QEMU's start).

A module added here is a choice: each one costs start time in every packed tool.
"""

from __future__ import annotations

# Our modules on the QEMU run path of a pack that attaches nothing from the host, exactly.
# The planner asks krun first (krun_engine), then QEMU. Ports, ssh-agent, host directories
# and secrets (agent.channels, host_resources, hostdir) load only for a run that has any.
SMOLPACK_MODULES = {
    "smolpack",
    "smolpack.agent",
    "smolpack.agent.protocol",
    "smolpack.agent.session",
    "smolpack.atomic_file",
    "smolpack.cache",
    "smolpack.engine",
    "smolpack.engine.console",
    "smolpack.engine.console_log",
    "smolpack.engine.disk_refs",
    "smolpack.engine.interface",  # RAM pages rebuilt from the disk (first run of a pack)
    "smolpack.engine.krun_engine",
    "smolpack.engine.qcow2",
    "smolpack.engine.qemu",
    "smolpack.engine.qemu_compat",
    "smolpack.engine.qemu_engine",
    "smolpack.engine.qemu_run",
    "smolpack.engine.qemu_state",
    "smolpack.engine.qmp",
    "smolpack.engine.registry",
    "smolpack.engine.select",
    "smolpack.errors",
    "smolpack.host",
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
