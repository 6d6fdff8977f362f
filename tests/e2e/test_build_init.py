"""Build-time `init` steps: output streams to the builder; a failing step fails the build.

Issue "A real VM, end to end here", §2: "a failing step fails the build with its exit code
and last lines". One build VM per test (~5 s under TCG).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, make_busybox_rootfs, qemu_pids, smolpack

pytestmark = pytest.mark.vm

BUILD_ERROR = 5  # formats/exit-codes.md: BuildError


def test_failing_init_step_fails_the_build_with_its_code_and_last_lines(
    tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Smolfile").write_text(
        'image = "./rootfs"\n'
        "memory = 128\n"
        "init = [\n"
        '  "echo first-step-ran",\n'
        '  "echo line-a; echo line-b >&2; exit 3",\n'
        '  "echo never-runs",\n'
        "]\n"
    )
    out = tmp_path / "out" / "tool.smolmachine"
    res = smolpack("create", "-o", str(out), str(tmp_path), env=e2e_env)
    err = res.stderr.decode()

    assert res.returncode == BUILD_ERROR, err
    # Step output streamed to the builder as it ran; the third step never started.
    assert "first-step-ran" in err
    assert "\nnever-runs\n" not in err
    assert "Traceback" not in err
    assert "console" not in err  # the step's output is the story, not the kernel's
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: init step 2 failed with exit code 3: echo line-a; echo line-b >&2; exit 3"
        " (last output: line-a | line-b)"
    ]
    assert err.rstrip("\n").splitlines()[-1] == errors[0]
    # Nothing half-written: no output file, no temporary beside it.
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_allow_lists_are_announced_as_krun_only(tmp_path: Path, e2e_env: dict[str, str]) -> None:
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Smolfile").write_text(
        'image = "./rootfs"\nmemory = 128\n[network]\nallow_cidrs = ["10.0.0.0/8"]\n'
    )
    out = tmp_path / "net.smolmachine"
    res = smolpack("create", "-o", str(out), str(tmp_path), env=e2e_env)
    assert res.returncode == 0, res.stderr.decode()
    assert (
        "network allow lists are enforced by the krun engine only;"
        " under QEMU the guest's egress is unrestricted"
    ) in res.stderr.decode()
    info = smolpack("inspect", "--json", str(out), env=e2e_env)
    machine = json.loads(info.stdout)["manifest"]["machine"]
    assert (machine["net"], machine["allow_cidrs"]) == (True, ["10.0.0.0/8"])


def test_sigterm_during_create_stops_the_build_vm_and_leaves_nothing(
    tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    make_busybox_rootfs(tmp_path / "rootfs")
    (tmp_path / "Smolfile").write_text(
        'image = "./rootfs"\nmemory = 128\ninit = ["echo step-started; sleep 30"]\n'
    )
    out = tmp_path / "out" / "tool.smolmachine"
    out.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolpack", "create", "-o", str(out), str(tmp_path)],
        stderr=subprocess.PIPE,
        env=e2e_env,
        cwd=REPO,
    )
    assert proc.stderr is not None
    seen = b""
    while b"step-started" not in seen:  # the init step runs in the build VM
        line = proc.stderr.readline()
        assert line, f"create ended before its init step ran: {seen.decode()}"
        seen += line
    # The build VM's disk lives in the work dir beside the output: its QEMU names it.
    assert qemu_pids(str(out.parent)), "no build VM running"
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (seen + rest).decode()
    assert rest.endswith(b"Aborted.\n")
    assert b"Traceback" not in rest
    assert qemu_pids(str(out.parent)) == set()
    assert os.listdir(out.parent) == []  # no output, no .smolpack-build-* work dir
