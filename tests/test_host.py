"""smolpack.host facts and `smolpack doctor` (which engine would run here, and why)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.cli._doctor_cmds import _choose
from smolpack.engine.qemu_engine import QemuEngine
from smolpack.engine.select import HostFacts
from smolpack.errors import HostError
from smolpack.host import KvmStatus, find_qemu, host_arch, kvm_status, qemu_version

PVM_REASON = "/dev/kvm is provided by kvm_pvm, which cannot run a normal guest kernel"
ON_PVM = Path("/sys/module/kvm_pvm").exists()


@pytest.mark.parametrize(
    ("machine", "arch"), [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("arm64", "aarch64")]
)
def test_arch_aliases(machine: str, arch: str) -> None:
    assert host_arch(machine) == arch


def test_unsupported_arch() -> None:
    with pytest.raises(HostError) as exc:
        host_arch("riscv64")
    assert str(exc.value) == "unsupported host architecture 'riscv64'; use x86_64 or aarch64"


def fake_host(tmp_path: Path, *, dev: bool, modules: list[str], flags: str) -> dict[str, Path]:
    sys_module = tmp_path / "module"
    for m in modules:
        (sys_module / m).mkdir(parents=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    dev_kvm = tmp_path / "kvm"
    if dev:
        dev_kvm.write_bytes(b"")
    return {"dev_kvm": dev_kvm, "sys_module": sys_module, "cpuinfo": cpuinfo}


PVM_FMT = "{dev} is provided by kvm_pvm, which cannot run a normal guest kernel"
MISSING_FMT = "{dev} does not exist (KVM not loaded or not exposed)"
NO_VMX = "the CPU reports no vmx/svm (no hardware virtualization)"


@pytest.mark.parametrize(
    ("dev", "modules", "flags", "expected"),
    [
        (False, ["kvm"], "fpu vmx", (False, MISSING_FMT)),
        (True, ["kvm", "kvm_pvm"], "fpu sse", (False, PVM_FMT)),
        (True, ["kvm"], "fpu sse2 hypervisor", (False, NO_VMX)),
        (True, ["kvm", "kvm_intel"], "fpu vmx", (True, "{dev} is usable (kvm_intel)")),
        (True, ["kvm", "kvm_amd"], "fpu svm", (True, "{dev} is usable (kvm_amd)")),
    ],
)
def test_kvm_status_on_fake_hosts(
    tmp_path: Path, dev: bool, modules: list[str], flags: str, expected: tuple[bool, str]
) -> None:
    paths = fake_host(tmp_path, dev=dev, modules=modules, flags=flags)
    usable, reason = kvm_status(**paths, arch="x86_64")
    assert (usable, reason) == (expected[0], expected[1].format(dev=paths["dev_kvm"]))


def test_aarch64_has_no_cpu_flag_check(tmp_path: Path) -> None:
    paths = fake_host(tmp_path, dev=True, modules=["kvm"], flags="fp asimd")
    assert kvm_status(**paths, arch="aarch64").usable


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any file")
def test_kvm_not_accessible(tmp_path: Path) -> None:
    paths = fake_host(tmp_path, dev=True, modules=["kvm_intel"], flags="vmx")
    paths["dev_kvm"].chmod(0)
    assert kvm_status(**paths, arch="x86_64") == (
        False,
        f"{paths['dev_kvm']} is not readable and writable by this user (add it to group kvm)",
    )


@pytest.mark.skipif(not ON_PVM, reason="only on kvm_pvm hosts")
def test_this_host_is_detected_as_pvm() -> None:
    assert kvm_status() == (False, PVM_REASON)


def test_find_qemu_and_version() -> None:
    qemu = find_qemu("x86_64")
    assert qemu.is_absolute() and qemu.name == "qemu-system-x86_64"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", qemu_version(qemu))


def test_qemu_missing_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(HostError) as exc:
        find_qemu("aarch64", search_path=str(tmp_path))
    assert str(exc.value) == (
        "qemu-system-aarch64 not found on PATH;"
        " run `apt-get install qemu-system-arm` (or your distribution's qemu)"
    )


def test_qemu_version_of_a_broken_binary(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho garbage\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(HostError) as exc:
        qemu_version(fake)
    assert str(exc.value) == f"{fake} --version printed no version (exit 3)"


def facts(hv: KvmStatus, *, libkrun: bool = True, qemu: bool = True) -> HostFacts:
    return HostFacts(arch="x86_64", os="linux", hypervisor=hv,
                     libkrun="smolmachines" if libkrun else None,
                     qemu="/usr/bin/qemu-system-x86_64" if qemu else None)  # fmt: skip


def test_accel() -> None:
    usable, unusable = KvmStatus(True, "ok"), KvmStatus(False, "no")
    qemu = QemuEngine()
    assert qemu.setup("x86_64", facts(usable), None)[1] == "kvm"
    assert qemu.setup("aarch64", facts(usable), None)[1] == "tcg"
    assert qemu.setup("x86_64", facts(unusable), None)[1] == "tcg"


def test_engine_choice() -> None:
    # doctor asks the run's planner about a guest of this host's architecture
    ok, pvm = KvmStatus(True, "/dev/kvm is usable (kvm_intel)"), KvmStatus(False, PVM_REASON)
    assert _choose("x86_64", facts(ok)) == ("krun", None, "krun: /dev/kvm is usable (kvm_intel)")
    assert _choose("x86_64", facts(pvm)) == (
        "qemu", "tcg", f"qemu (tcg): hardware virtualization unavailable: {PVM_REASON}"
    )  # fmt: skip
    assert _choose("x86_64", facts(ok, libkrun=False)) == (
        "qemu", "kvm", "qemu (kvm): libkrun not found"
    )  # fmt: skip
    engine, _, reason = _choose("x86_64", facts(pvm, qemu=False))
    assert engine is None
    assert reason == (
        f"no engine: hardware virtualization unavailable: {PVM_REASON};"
        " qemu-system-x86_64 not found"
    )


# -- smolpack doctor --------------------------------------------------------------


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolpack", "doctor", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[1],
    )


def test_doctor_text() -> None:
    res = doctor()
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:7]] == [
        "host", "hypervisor", "qemu", "libkrun", "libkrunfw", "engine", "tools",
    ]  # fmt: skip
    tools = [line.split()[0] for line in lines[7:]]
    assert tools == ["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "debugfs", "dumpe2fs",
                     tools[-1]]  # fmt: skip
    assert re.search(r"^  qemu-img +/\S+/qemu-img \(qemu-img version \d+\.\d+.*\) \[create\]$",
                     res.stdout, re.M)  # fmt: skip
    assert re.search(r"^libkrunfw: .*libkrunfw\.so\.5 \(ABI 5, Linux \d+\.\d+", res.stdout, re.M)
    assert re.search(r"^qemu: +/\S+/qemu-system-x86_64 \(\d+\.\d+", res.stdout, re.M)
    if ON_PVM:
        assert (
            lines[5] == f"engine:     qemu (tcg): hardware virtualization unavailable: {PVM_REASON}"
        )


def test_doctor_names_the_package_of_a_missing_tool(tmp_path: Path) -> None:
    (tmp_path / "qemu-system-x86_64").symlink_to(find_qemu("x86_64"))
    res = doctor("--json", PATH=str(tmp_path))
    assert res.returncode == 0, res.stderr
    tools = {t["name"]: t for t in json.loads(res.stdout)["tools"]}
    assert tools["qemu-img"] == {
        "name": "qemu-img", "used_by": "create", "package": "qemu-utils",
        "path": None, "version": None,
    }  # fmt: skip
    assert tools["qemu-system-x86_64"]["version"].startswith("QEMU emulator version ")
    assert tools["mkfs.ext4"]["version"].startswith("mke2fs 1.")  # found in /usr/sbin


def test_doctor_json_with_libs_missing(tmp_path: Path) -> None:
    res = doctor("--json", SMOLPACK_LIBKRUN_DIR=str(tmp_path))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["libs_source"] is None
    assert report["libs_error"] == (
        f"SMOLPACK_LIBKRUN_DIR={tmp_path} has no libkrun.so; point SMOLPACK_LIBKRUN_DIR"
        " at a directory holding libkrun.so and libkrunfw.so.5"
    )
    assert report["engine"] == "qemu"
    assert report["qemu_version"]
    assert set(report) >= {"arch", "os", "hypervisor_usable", "kernel_version", "accel"}


@pytest.mark.skipif(not ON_PVM, reason="needs a host without usable KVM")
def test_doctor_fails_when_no_engine_can_run(tmp_path: Path) -> None:
    res = doctor(SMOLPACK_LIBKRUN_DIR=str(tmp_path), PATH=str(tmp_path))
    assert res.returncode == 4
    assert "qemu:       missing: qemu-system-x86_64 not found on PATH" in res.stdout
    assert res.stderr == (
        f"Error: no engine: hardware virtualization unavailable: {PVM_REASON};"
        " qemu-system-x86_64 not found\n"
    )
