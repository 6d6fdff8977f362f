"""The engine seam: an engine is its own module plus one registry line (tests/hostproc_engine.py).

Registered, the test engine is planned, listed by `doctor` and `--engine`, and runs a pack
through the launcher's real run path, with no change anywhere else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from payload_helpers import REPO, write_fake_pack

from smolpack.cli import cli as cli_main
from smolpack.engine import registry
from smolpack.engine.select import HostFacts, plan_run
from smolpack.errors import UsageError
from smolpack.host import KvmStatus
from smolpack.launcher import main as launcher_main
from smolpack.launcher import parse_args
from smolpack.payload import Manifest

PVM = KvmStatus(False, "/dev/kvm is provided by kvm_pvm, which cannot run a normal guest kernel")


@pytest.fixture
def hostproc() -> Iterator[None]:
    registry.register("hostproc", "hostproc_engine")  # the one line an engine adds
    try:
        yield
    finally:
        registry.unregister("hostproc")


def facts(*, qemu: bool) -> HostFacts:
    return HostFacts(arch="x86_64", os="linux", hypervisor=PVM, libkrun=None,
                     qemu="/usr/bin/qemu-system-x86_64" if qemu else None)  # fmt: skip


def test_the_registry_lists_the_shipped_engines_in_auto_order() -> None:
    assert registry.choices() == ("auto", "krun", "qemu")
    assert [registry.load(n).name for n in registry.names()] == ["krun", "qemu"]


@pytest.mark.usefixtures("hostproc")
def test_auto_falls_through_to_an_added_engine_and_says_why() -> None:
    manifest = Manifest(smolpack_version="0.1.0", created="2026-12-01T00:00:00Z",
                        guest_arch="x86_64")  # fmt: skip
    plan = plan_run(manifest, facts(qemu=True), requested="auto", cold=False)
    assert plan.engine == "qemu"  # listed first, still preferred
    plan = plan_run(manifest, facts(qemu=False), requested="auto", cold=False)
    assert (plan.engine, plan.state) == ("hostproc", None)
    assert plan.reason == (
        "hostproc, cold boot (no saved state for this engine and host):"
        f" hardware virtualization unavailable: {PVM.reason}; qemu-system-x86_64 not found"
    )
    plan = plan_run(manifest, facts(qemu=True), requested="hostproc", cold=False)
    assert plan.reason == "hostproc, cold boot (no saved state for this engine and host): requested"


def test_an_engine_not_registered_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError) as info:
        parse_args(["--smol-engine=hostproc"], {})
    assert str(info.value) == "--smol-engine must be auto, krun or qemu (got 'hostproc')"


@pytest.mark.usefixtures("hostproc")
def test_the_launcher_and_the_cli_accept_an_added_engine() -> None:
    opts, _ = parse_args(["--smol-engine=hostproc"], {})
    assert opts.engine == "hostproc"
    res = CliRunner().invoke(cli_main, ["run", "--help"])
    assert "[auto|krun|qemu|hostproc]" in res.output


@pytest.mark.usefixtures("hostproc")
def test_doctor_lists_an_added_engine_and_picks_it_when_nothing_else_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no QEMU
    monkeypatch.setenv("SMOLPACK_LIBKRUN_DIR", str(tmp_path))  # no libkrun
    res = CliRunner().invoke(cli_main, ["doctor", "--json"])
    report = json.loads(res.output)
    assert report["engines"]["hostproc"] == "usable: the agent runs as a host process"
    assert report["engines"]["qemu"] == "unusable: qemu-system-x86_64 not found"
    assert report["engine"] == "hostproc"
    assert report["engine_reason"].startswith("hostproc: libkrun not found") or (
        report["engine_reason"].startswith("hostproc: hardware virtualization unavailable")
    )
    text = CliRunner().invoke(cli_main, ["doctor"]).output
    assert "  hostproc  usable: the agent runs as a host process" in text


@pytest.mark.usefixtures("hostproc")
def test_a_run_is_dispatched_to_an_added_engine(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pack = write_fake_pack(tmp_path / "t.smolmachine", workdir=str(tmp_path),
                           env=["PATH=/usr/bin:/bin"])  # fmt: skip
    with pytest.raises(SystemExit) as info:
        launcher_main(["--smol-engine=hostproc", "--smol-debug", "echo ran in $PWD; exit 7"],
                      pack=str(pack))  # fmt: skip
    out, err = capfd.readouterr()
    assert (info.value.code, out) == (7, f"ran in {tmp_path}\n"), err
    assert "smolpack: hostproc cold boot" in err


def test_the_shipped_engines_load_nothing_heavy() -> None:
    # The planner loads every engine to ask it; its VM machinery loads only in `start`.
    script = (
        "import sys, json\nsys.path.insert(0, '.')\nbase = set(sys.modules)\n"
        "from smolpack.engine import registry\n"
        "[registry.load(n) for n in registry.names()]\n"
        "print(json.dumps(sorted(set(sys.modules) - base)))"
    )
    res = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ}, check=True)  # fmt: skip
    loaded = set(json.loads(res.stdout))
    assert {"smolpack.engine.krun_engine", "smolpack.engine.qemu_engine"} <= loaded
    for heavy in ("smolpack.engine.qemu", "smolpack.engine.krun", "smolpack.engine.qemu_run",
                  "smolpack.engine.krun_run", "ctypes"):  # fmt: skip
        assert heavy not in loaded, heavy


@pytest.mark.usefixtures("hostproc")
def test_create_state_lists_only_engines_that_save_and_refuses_the_others(
    tmp_path: Path,
) -> None:
    assert registry.savers() == ("krun", "qemu")  # hostproc declares it keeps no state
    res = CliRunner().invoke(cli_main, ["create", "--help"])
    assert "--state [auto|krun|qemu]" in res.output
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "Smolfile").write_text('image = "./rootfs"\n')
    out = tmp_path / "out" / "x.smolmachine"
    res = CliRunner().invoke(
        cli_main, ["create", "--state=hostproc", "-o", str(out), str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "Invalid value for '--state': 'hostproc' is not one of 'auto', 'krun', 'qemu'." in (
        res.output
    )
    assert not out.parent.exists()
