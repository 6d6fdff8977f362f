"""Which recorded QEMU facts let a state restore here (a real QEMU binary answers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smolpack.engine.qemu import CPU_MODEL, MACHINE
from smolpack.engine.qemu_compat import qemu_facts, restore_blocker
from smolpack.payload.manifest import StateRef

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")


def state(**recorded: str) -> StateRef:
    return StateRef(name="q", engine="qemu", host_arch="x86_64", host_os="linux",
                    sections=("q/m",), recorded=recorded)  # fmt: skip


def test_facts_and_patch_releases_of_one_series_agree() -> None:
    assert QEMU is not None
    here = qemu_facts(Path(QEMU))
    assert (here["machine"], here["cpu"]) == (MACHINE, CPU_MODEL)
    major, minor, *_ = here["qemu_version"].split(".")
    assert restore_blocker(state(**here), Path(QEMU)) is None
    assert restore_blocker(state(), Path(QEMU)) is None  # nothing recorded: try it
    same_series = {**here, "qemu_version": f"{major}.{minor}.999"}
    assert restore_blocker(state(**same_series), Path(QEMU)) is None
    assert restore_blocker(state(**{**here, "qemu_version": "6.0.0"}), Path(QEMU)) == (
        f"it was saved by QEMU 6.0.0, this host has {here['qemu_version']}"
    )
    assert restore_blocker(state(**{**here, "cpu": "host"}), Path(QEMU)) == (
        "it was saved by CPU model host, this host has max"
    )
