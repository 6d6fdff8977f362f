"""`create --state`: which engines' saved states a pack carries (no VM boots here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.host import hypervisor_status

HV = hypervisor_status()


@pytest.mark.skipif(HV.usable, reason="this host can build a krun state")
def test_state_krun_where_krun_cannot_run_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "Smolfile").write_text('image = "./rootfs"\n')
    out = tmp_path / "out" / "x.smolmachine"
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", "create", "--state=krun", "-o", str(out), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 4
    assert res.stderr == (
        f"Error: cannot build a krun state here: hardware virtualization unavailable:"
        f" {HV.reason}; use --state=qemu\n"
    )
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_state_choices_are_listed_in_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", "create", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    assert "--state [auto|krun|qemu]" in res.stdout


@pytest.mark.skipif(HV.usable, reason="this host can build a krun state")
def test_auto_skips_the_krun_state_here_and_says_why() -> None:
    from smolpack.build import _states_to_build
    from smolpack.engine import registry

    savers = [registry.load(name) for name in registry.savers()]
    builds = [(e.name, why) for e, why in _states_to_build(savers, "auto")]
    assert builds == [
        ("krun", f"hardware virtualization unavailable: {HV.reason}; the pack restores under QEMU"),
        ("qemu", None),
    ]
    builds = [(e.name, why) for e, why in _states_to_build(savers, "qemu")]
    assert builds == [("krun", "--state=qemu"), ("qemu", None)]
