"""The nested-KVM lane's harness (tests/kvm_lane/l1.py): the parts that run on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "kvm_lane"))
import l1  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("console", "hung"),
    [
        ("", None),
        ("[ 300.4] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [rcu_preempt:15]\n", None),
        (
            "[ 300.4] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [rcu_preempt:15]\n"
            "[ 392.5] watchdog: BUG: soft lockup - CPU#1 stuck for 130s! [kthreadd:2]\n"
            "[ 392.6] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n",
            "CPU#1 stuck for 130 s",
        ),
    ],
)
def test_a_soft_lockup_of_two_minutes_is_a_hang(tmp_path: Path, console: str, hung: str) -> None:
    log = tmp_path / "console.log"
    log.write_text("x" * 100_000 + "\n" + console)  # only the tail is read
    assert l1._hung(log) == hung


def test_no_console_log_yet_is_no_hang(tmp_path: Path) -> None:
    assert l1._hung(tmp_path / "console.log") is None


def test_the_command_runs_in_the_callers_dir_with_its_env(tmp_path: Path) -> None:
    script = l1.command_script(["printf", "%s|", "a b", "$HOME"], "/some dir", {"K": "v w"})
    out = subprocess.run(
        ["sh", "-c", script.replace("cd '/some dir'", f"cd {tmp_path}")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "a b|$HOME|"
    assert "export K='v w'" in script


def test_lean_python_hides_the_pth_hooks_and_puts_the_project_on_the_path(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hook.pth").write_text("import os\n")
    (site / "keep.txt").write_text("")
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\necho {site}\n")  # stands in for `-c getsitepackages()`
    fake_python.chmod(0o755)
    script = l1.command_script(["sh", "-c", 'echo "$PYTHONPATH"'], str(tmp_path), {}, True)
    script = script.replace(sys.executable, str(fake_python))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(REPO)
    assert sorted(p.name for p in site.iterdir()) == ["hook.pth.l1-hidden", "keep.txt"]
