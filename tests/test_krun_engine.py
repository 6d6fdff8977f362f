"""The krun engine on a host that cannot run a libkrun guest (ours: /dev/kvm is kvm_pvm).

- the state-file <-> section mapping and the memory-layout checks (pure);
- the full launch path up to krun_start_enter, in a forked child, against the real
  libkrun: every configuration call succeeds, then the child refuses to enter with the
  one-line hardware-virtualization error, in well under the ~13 s a kvm_pvm guest would
  crawl before dying;
- `--smol-engine=krun` / `smolpack run --engine=krun`: exit 120 / 4 and one line naming
  kvm_pvm and the right flag; auto picks QEMU here and says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from payload_helpers import REPO, write_fake_pack

from smolpack.engine.console import console_tail
from smolpack.engine.disk_refs import DiskRefs
from smolpack.engine.krun import KrunSpec, KrunVm, require_hypervisor
from smolpack.engine.krun_run import dns_resolvers, machine_spec
from smolpack.engine.krun_state import (
    MAP_PAGE,
    MemoryMap,
    MemoryRegion,
    StateSections,
    decode_cpu,
    encode_cpu,
    encode_memory_layout,
    pack_memory,
    read_memory_layout,
    restore_blocker,
    state_ref,
    state_sections,
    unpack_memory,
)
from smolpack.engine.select import HostFacts, plan_run
from smolpack.errors import EngineError, HostError
from smolpack.host import CpuId, KvmStatus, cpu_id, hypervisor_status
from smolpack.machine import MachineConfig
from smolpack.payload import Manifest, StateRef
from smolpack.payload.layout import Codec, SectionKind
from smolpack.runtime_libs import find_runtime_libs

HV = hypervisor_status()
no_guest_here = pytest.mark.skipif(HV.usable, reason="this host can run a libkrun guest")
KVM_PVM = Path("/sys/module/kvm_pvm").exists()
needs_kvm_pvm = pytest.mark.skipif(not KVM_PVM, reason="the one-line error names kvm_pvm")


# -- state sections (pure) ------------------------------------------------------------


def test_state_ref_for_each_host() -> None:
    ref = state_ref(host_arch="x86_64", host_os="linux", own_disk=True)
    assert ref == StateRef(
        name="krun-x86_64",
        engine="krun",
        host_arch="x86_64",
        host_os="linux",
        sections=(
            "krun-x86_64/memory.data",
            "krun-x86_64/memory.map",
            "krun-x86_64/checkpoint.bin",
            "krun-x86_64/manifest.bin",
            "krun-x86_64/cpu.json",
            "krun-x86_64/memory.refs",
            "krun-x86_64/disk",
        ),
    )
    mac = state_ref(host_arch="aarch64", host_os="macos", own_disk=False)
    assert mac.name == "krun-aarch64" and mac.host_os == "macos" and len(mac.sections) == 6
    assert StateSections.from_ref(mac).disk == "disk"
    assert StateSections.from_ref(mac).memory_refs == "krun-aarch64/memory.refs"
    assert StateSections.from_ref(ref).disk == "krun-x86_64/disk"
    old = state_ref(host_arch="x86_64", host_os="linux", own_disk=True, refs=False)
    assert old.sections == ref.sections[:5] + ref.sections[6:]  # spec 2.0 states still read
    assert StateSections.from_ref(old).memory_refs is None


def test_state_files_become_sections(tmp_path: Path) -> None:
    ref = state_ref(host_arch="x86_64", host_os="linux", own_disk=True)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"d" * 4096)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "memory.bin").write_bytes(bytes(8192) + b"x" * 4096 + b"d" * 4096)
    got = state_sections(ref, tmp_path / "state", disk, memory_disk=disk)
    assert [(s.name, s.kind, s.path.name, s.codec) for s in got] == [
        ("krun-x86_64/memory.data", SectionKind.STATE, "memory.data", Codec.NONE),
        ("krun-x86_64/memory.map", SectionKind.STATE, "memory.map", Codec.ZSTD),
        ("krun-x86_64/checkpoint.bin", SectionKind.STATE, "checkpoint.bin", Codec.ZSTD),
        ("krun-x86_64/manifest.bin", SectionKind.STATE, "manifest.bin", Codec.ZSTD),
        ("krun-x86_64/cpu.json", SectionKind.STATE, "cpu.json", Codec.ZSTD),
        ("krun-x86_64/memory.refs", SectionKind.STATE, "memory.refs", Codec.ZSTD),
        ("krun-x86_64/disk", SectionKind.DISK, "disk.raw", Codec.NONE),
    ]
    assert not (tmp_path / "state" / "memory.bin").exists()  # split, then removed
    # the page equal to the disk's block is a reference, not data
    assert (tmp_path / "state" / "memory.data").read_bytes() == b"x" * 4096
    refs = DiskRefs.decode((tmp_path / "state" / "memory.refs").read_bytes(),
                           image_size=16384, disk_size=4096, label="t")  # fmt: skip
    assert refs.runs == ((3, 0, 1),)
    (tmp_path / "memory.bin").write_bytes(bytes(4096))
    with pytest.raises(EngineError, match="disagree"):
        state_sections(ref, tmp_path, None, memory_disk=disk)


def test_memory_keeps_only_nonzero_pages_and_unpacks_to_the_same_bytes(tmp_path: Path) -> None:
    page = MAP_PAGE
    image = bytearray(64 * page)
    image[3 * page + 7] = 1  # one byte dirties a whole page
    image[4 * page : 6 * page] = b"y" * (2 * page)  # adjacent pages: one extent
    image[40 * page + page - 1] = 2
    memory = tmp_path / "memory.bin"
    memory.write_bytes(bytes(image))
    # a hole in a sparse file reads as zeros and is skipped without being read
    with memory.open("r+b") as f:
        f.truncate(1024 * page)
    image.extend(bytes((1024 - 64) * page))
    mmap = pack_memory(memory, tmp_path / "data", tmp_path / "map")
    assert mmap.extents == ((3 * page, 3 * page), (40 * page, page))
    data = (tmp_path / "data").read_bytes()
    assert len(data) == 4 * page == mmap.data_size
    decoded = MemoryMap.decode((tmp_path / "map").read_bytes(), data_size=len(data), label="t")
    assert decoded == mmap
    out = tmp_path / "out"
    with out.open("wb") as f:
        unpack_memory(
            decoded,
            lambda off, n: data[off : off + n],
            f.fileno(),
            hashlib.sha256(data).digest(),
            "t",
        )
    assert out.read_bytes() == bytes(image)
    assert os.stat(out).st_blocks * 512 < 64 * page  # the zeros stayed holes
    with out.open("wb") as f, pytest.raises(EngineError, match="does not match its digest"):
        unpack_memory(decoded, lambda off, n: data[off : off + n], f.fileno(), bytes(32), "t")


def test_a_state_restores_only_where_the_cpu_has_what_the_saving_one_had(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 svm\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 svm\n"
    )
    saved = cpu_id(info)
    assert saved == CpuId("AuthenticAMD", frozenset({"fpu", "sse2", "avx2", "svm"}))
    assert decode_cpu(encode_cpu(saved), "t") == saved
    assert restore_blocker(saved, saved) is None
    assert restore_blocker(saved, CpuId("AuthenticAMD", saved.flags | {"avx512f"})) is None
    assert restore_blocker(saved, CpuId("AuthenticAMD", frozenset({"fpu", "sse2"}))) == (
        "it was saved on a CPU with what this one lacks: avx2, svm"
    )
    assert restore_blocker(saved, CpuId("GenuineIntel", saved.flags)) == (
        "it was saved on a CPU with what this one lacks: vendor AuthenticAMD"
        " (this CPU is GenuineIntel)"
    )
    many = CpuId("AuthenticAMD", frozenset(f"f{i}" for i in range(8)))
    assert restore_blocker(many, CpuId("AuthenticAMD", frozenset())).endswith("f4 (+3 more)")
    for bad in (b"{", b"{}", b'{"vendor": 1, "flags": []}', b'{"vendor": "x", "flags": [1]}'):
        with pytest.raises(EngineError, match="cpu.json is malformed"):
            decode_cpu(bad, "t")


def test_memory_map_checks() -> None:
    good = MemoryMap(16 * MAP_PAGE, ((0, MAP_PAGE), (2 * MAP_PAGE, MAP_PAGE))).encode()
    assert MemoryMap.decode(good, data_size=2 * MAP_PAGE, label="t").size == 16 * MAP_PAGE
    cases = [
        (b"X" + good[1:], "no SMOLMMAP header"),
        (good[:8] + (2).to_bytes(4, "little") + good[12:], "version 2"),
        (good + b"\0", "2 extents in 57 bytes"),
        (MemoryMap(MAP_PAGE, ((0, 2 * MAP_PAGE),)).encode(), "extent 0 is out"),
        (MemoryMap(8 * MAP_PAGE, ((MAP_PAGE, MAP_PAGE), (0, MAP_PAGE))).encode(), "extent 1"),
        (MemoryMap(8 * MAP_PAGE, ((1, MAP_PAGE),)).encode(), "extent 0"),
        (MemoryMap(8 * MAP_PAGE, ((0, MAP_PAGE),)).encode(), "places 4096 bytes"),
    ]
    for bad, message in cases:
        with pytest.raises(EngineError, match=message):
            MemoryMap.decode(bad, data_size=2 * MAP_PAGE, label="t")


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (("krun-x86_64/memory.data",), "must name sections"),
        (("a", "b", "c", "d"), "must name sections"),
        (
            (
                "krun-x86_64/memory.bin",
                "krun-x86_64/checkpoint.bin",
                "krun-x86_64/manifest.bin",
            ),
            "must name sections",
        ),
        (
            (
                "krun-x86_64/memory.data",
                "krun-x86_64/memory.map",
                "krun-x86_64/checkpoint.bin",
                "krun-x86_64/manifest.bin",
                "krun-x86_64/cpu.json",
                "krun-x86_64/disk2",
            ),
            "must name sections",
        ),
    ],
)
def test_malformed_krun_state_refs(sections: tuple[str, ...], message: str) -> None:
    ref = StateRef(
        name="krun-x86_64", engine="krun", host_arch="x86_64", host_os="linux", sections=sections
    )
    with pytest.raises(EngineError, match=message):
        StateSections.from_ref(ref)


def test_memory_layout_checks() -> None:
    regions = [MemoryRegion(0, 0xC000_0000), MemoryRegion(0x1_0000_0000, 0x4000)]
    data = encode_memory_layout(regions)
    assert data[:8] == b"TROPLOMS"  # "SMOLPORT" as a little-endian u64
    assert read_memory_layout(data, memory_size=0xC000_4000, label="t") == regions
    cases = [
        (data[:10], 0xC000_4000, "truncated"),
        (b"X" * 8 + data[8:], 0xC000_4000, "not SMOLPORT"),
        (data[:8] + (2).to_bytes(4, "little") + data[12:], 0xC000_4000, "version 2"),
        (data + b"\0", 0xC000_4000, "2 regions in 49 bytes"),
        (data, 0xC000_0000, "memory is 3221225472 bytes, its manifest says 3221241856"),
        (encode_memory_layout([MemoryRegion(0x2000, 0x2000), MemoryRegion(0x1000, 0x1000)]),
         0x3000, "overlaps"),
        (encode_memory_layout([MemoryRegion(0, 0)]), 0, "empty"),
    ]  # fmt: skip
    for bad, size, message in cases:
        with pytest.raises(EngineError, match=message):
            read_memory_layout(bad, memory_size=size, label="t")


def test_machine_config_keeps_egress_lists_and_old_manifests_still_parse() -> None:
    base = dict(
        cpus=1, memory_mib=256, net=True, entrypoint=(), cmd=(), env=(), workdir="",
        kernel_cmdline="quiet",
    )  # fmt: skip
    plain = MachineConfig(**base)  # type: ignore[arg-type]
    assert "allow_hosts" not in plain.to_dict()  # unchanged bytes for packs without lists
    assert MachineConfig.from_dict(plain.to_dict()) == plain
    lists = MachineConfig(**base, allow_hosts=("example.com",), allow_cidrs=("10.0.0.0/8",))  # type: ignore[arg-type]
    assert MachineConfig.from_dict(json.loads(json.dumps(lists.to_dict()))) == lists


def test_build_and_run_derive_the_same_machine_spec(tmp_path: Path) -> None:
    fields = dict(entrypoint=(), cmd=(), env=(), workdir="", kernel_cmdline="quiet")
    machine = MachineConfig(
        cpus=2, memory_mib=384, net=True, allow_hosts=("pypi.org",), allow_cidrs=("10.0.0.0/8",),
        **fields,  # type: ignore[arg-type]
    )  # fmt: skip
    offline = MachineConfig(cpus=1, memory_mib=256, net=False, **fields)  # type: ignore[arg-type]
    files = {
        "base_disk": tmp_path / "base",
        "overlay": tmp_path / "o",
        "console_log": tmp_path / "c",
    }
    build = machine_spec(machine, control_socket=tmp_path / "s", **files)
    run = machine_spec(machine, snapshot_dir=tmp_path / "st", memory_file=tmp_path / "m", **files)
    shape = ("cpus", "memory_mib", "net", "allow_hosts", "allow_cidrs", "dns_resolvers")
    assert [getattr(build, f) for f in shape] == [getattr(run, f) for f in shape]
    assert (build.cpus, build.memory_mib, build.net) == (2, 384, True)
    assert (build.allow_hosts, build.allow_cidrs) == (("pypi.org",), ("10.0.0.0/8",))
    assert build.dns_resolvers  # allow_hosts needs trusted resolvers
    assert machine_spec(offline, **files).dns_resolvers == ()


def test_dns_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\n")
    assert dns_resolvers(conf) == ("10.0.0.2", "fe80::1")
    assert dns_resolvers(tmp_path / "none") == ("1.1.1.1",)


# -- the launch path up to krun_start_enter ---------------------------------------------


def spec_for(tmp_path: Path, **extra: object) -> KrunSpec:
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        f.truncate(8 << 20)
    values: dict[str, object] = dict(
        cpus=1,
        memory_mib=256,
        base_disk=base.resolve(),
        overlay=tmp_path / "overlay.qcow2",
        console_log=tmp_path / "console.log",
    )
    values.update(extra)
    return KrunSpec(**values)  # type: ignore[arg-type]


@no_guest_here
def test_launch_configures_everything_then_refuses_to_enter(tmp_path: Path) -> None:
    memory = tmp_path / "memory.bin"
    memory.write_bytes(b"\0" * 16384)
    spec = spec_for(
        tmp_path,
        net=True,
        allow_hosts=("example.com",),
        allow_cidrs=("10.0.0.0/8",),
        dns_resolvers=("1.1.1.1",),
        control_socket=tmp_path / "ctl.sock",
        snapshot_dir=tmp_path,
        memory_file=memory,
    )
    t0 = time.monotonic()
    with pytest.raises(HostError) as info:
        KrunVm(find_runtime_libs(), spec)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"took {elapsed:.1f} s: the guard must come before emulation"
    assert info.value.problem == f"hardware virtualization unavailable: {HV.reason}"
    assert info.value.hint == "use --smol-engine=qemu"
    # The child got through every libkrun configuration call before the guard:
    assert (tmp_path / "overlay.qcow2").read_bytes()[:4] == b"QFI\xfb"
    assert (tmp_path / "console.log").exists()


@no_guest_here
def test_launch_reports_the_flag_it_was_given(tmp_path: Path) -> None:
    with pytest.raises(HostError) as info:
        KrunVm(find_runtime_libs(), spec_for(tmp_path), flag="--engine")
    assert info.value.hint == "use --engine=qemu"


def test_configuration_failure_is_an_engine_error_with_libkrun_errno(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, overlay=tmp_path / "no" / "such" / "dir" / "o.qcow2")
    with pytest.raises(EngineError) as info:
        KrunVm(find_runtime_libs(), spec)
    assert not isinstance(info.value, HostError)
    assert str(info.value).startswith("krun_create_disk_overlay failed: EIO")


def test_relative_base_disk_is_refused(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, base_disk=Path("base.raw"))
    with pytest.raises(EngineError, match="base disk path must be absolute: base.raw"):
        KrunVm(find_runtime_libs(), spec)


def test_require_hypervisor() -> None:
    require_hypervisor(status=KvmStatus(True, "/dev/kvm is usable (kvm_intel)"))
    with pytest.raises(HostError) as info:
        require_hypervisor("--engine", KvmStatus(False, "/dev/kvm does not exist"))
    assert str(info.value) == (
        "hardware virtualization unavailable: /dev/kvm does not exist; use --engine=qemu"
    )


# -- front ends ----------------------------------------------------------------------


@needs_kvm_pvm
def test_forced_krun_in_a_packed_tool_exits_120_with_one_line(tmp_path: Path) -> None:
    pack = write_fake_pack(tmp_path / "fake.smolmachine")
    code = f"import sys; from smolpack.launcher import main; main(sys.argv[1:], pack={str(pack)!r})"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", code, "--smol-engine=krun", "true"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "SMOLPACK_CACHE_DIR": str(tmp_path / "cache")},
        timeout=60,
    )
    assert time.monotonic() - t0 < 10
    assert res.returncode == 120
    assert res.stderr == (
        "Error: hardware virtualization unavailable: /dev/kvm is provided by kvm_pvm,"
        " which cannot run a normal guest kernel; use --smol-engine=qemu\n"
    )


def run_forced_krun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`smolpack run --engine=krun ARGS` with a cache of its own under tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", "smolpack", "run", "--engine=krun", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "SMOLPACK_CACHE_DIR": str(tmp_path / "cache")},
        timeout=60,
    )


@needs_kvm_pvm
def test_smolpack_run_names_its_own_flag(tmp_path: Path) -> None:
    pack = write_fake_pack(tmp_path / "fake.smolmachine")
    res = run_forced_krun(tmp_path, str(pack), "--", "true")
    assert res.returncode == 4
    assert res.stderr.strip().endswith("kvm_pvm, which cannot run a normal guest kernel;"
                                       " use --engine=qemu")  # fmt: skip
    assert "--smol-engine" not in res.stderr


@needs_kvm_pvm
def test_smolpack_run_refuses_forced_krun_before_building(tmp_path: Path) -> None:
    # A Smolfile (not a pack): building would boot a QEMU VM for seconds; refuse first.
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "Smolfile").write_text('image = "./rootfs"\n')
    res = run_forced_krun(tmp_path, str(tmp_path))
    assert res.returncode == 4
    assert res.stderr.splitlines() == [
        "Error: hardware virtualization unavailable: /dev/kvm is provided by kvm_pvm,"
        " which cannot run a normal guest kernel; use --engine=qemu"
    ]
    assert not (tmp_path / "cache").exists()


@no_guest_here
def test_auto_picks_qemu_on_this_host_and_says_why() -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("QEMU is not installed")
    manifest = Manifest(
        smolpack_version="0",
        created="2026-01-01T00:00:00Z",
        guest_arch="x86_64",
        states=(
            state_ref(host_arch="x86_64", host_os="linux", own_disk=False),
            StateRef(name="qemu-x86_64", engine="qemu", host_arch="x86_64", host_os="linux",
                     sections=("qemu-x86_64/migration",)),
        ),
    )  # fmt: skip
    facts = HostFacts(
        arch="x86_64", os="linux", hypervisor=HV, libkrun=find_runtime_libs().source, qemu=qemu
    )
    plan = plan_run(manifest, facts, requested="auto", cold=False)
    assert plan.engine == "qemu"
    assert plan.state is not None and plan.state.name == "qemu-x86_64"
    assert plan.reason == (
        f"qemu (tcg), restoring qemu-x86_64: hardware virtualization unavailable: {HV.reason}"
    )


def test_krun_modules_stay_stdlib_only() -> None:
    script = (
        "import sys, json\n"
        "sys.path.insert(0, '.')\n"
        "import smolpack.engine.krun_run, smolpack.engine.krun_control\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout))
    for heavy in ("click", "lief", "zstandard", "smol"):
        assert heavy not in loaded


def test_the_stub_bundles_every_krun_module_the_run_path_imports() -> None:
    from smolpack.stub_build import KRUN_MODULES

    script = (
        "import sys, json\n"
        "sys.path.insert(0, '.')\n"
        "import smolpack.engine.krun_run, smolpack.pack_libs\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=REPO
    )
    loaded = set(json.loads(res.stdout))
    krun = {m for m in loaded if m.startswith("smolpack.engine.krun")}
    assert krun <= set(KRUN_MODULES)
    assert "smolpack.engine.krun_run" in krun
    # krun_ffi is imported inside functions (the VMM child); it must be listed too.
    assert "smolpack.engine.krun_ffi" in KRUN_MODULES
    for module in KRUN_MODULES:
        assert importlib.util.find_spec(module) is not None, module


@no_guest_here
def test_create_builds_no_krun_state_here_and_says_why() -> None:
    from smolpack.engine import registry

    ok, why = registry.load("krun").can_save_here("x86_64")
    assert not ok
    assert why == f"hardware virtualization unavailable: {HV.reason}"


def _vmm_that_exits(tmp_path: Path, code: int) -> KrunVm:
    """A KrunVm whose VMM child is a real process that just exits (no guest runs here)."""
    vm = object.__new__(KrunVm)
    vm.console_log = tmp_path / "console.log"
    vm.log = tmp_path / "krun.log"
    vm.status = None
    vm.log.write_text("vmm: guest shut down\n")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only exits
        time.sleep(0.2)
        os._exit(code)
    vm.pid = pid
    return vm


def test_stop_reason_waits_for_the_vmm_and_names_how_it_ended(tmp_path: Path) -> None:
    vm = _vmm_that_exits(tmp_path, 3)
    assert vm.stop_reason(0.0) is None  # still running
    assert vm.stop_reason(10.0) == (
        "the libkrun VM process exited with code 3 (vmm: guest shut down)"
    )
    vm = _vmm_that_exits(tmp_path, 0)
    vm.console_log.write_text("[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
    assert vm.stop_reason(10.0) == "guest kernel panic: Attempted to kill init!"


def test_an_interrupted_start_leaves_no_vmm_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while the child configures libkrun: the launcher unwinds, and the child must
    # not outlive it (it would hold the overlay and, on a KVM host, a running guest).
    import smolpack.engine.krun as krun

    def interrupted(fd: int, timeout_s: float) -> str:
        raise KeyboardInterrupt

    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(krun, "_read_status", interrupted)
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(KeyboardInterrupt):
        KrunVm(find_runtime_libs(), spec_for(tmp_path))
    (pid,) = forked
    with pytest.raises(ChildProcessError):  # killed and reaped: not even a zombie is left
        os.waitpid(pid, os.WNOHANG)


def test_configure_keeps_what_it_hands_to_libkrun_alive(tmp_path: Path) -> None:
    from smolpack.engine.krun import configure
    from smolpack.engine.krun_ffi import KrunLib

    lib = KrunLib(find_runtime_libs())
    a, b = socket.socketpair()
    try:
        configure(lib, spec_for(tmp_path, net=True, allow_hosts=("example.com",),
                                dns_resolvers=("1.1.1.1",)), a.fileno())  # fmt: skip
    finally:
        a.close()
        b.close()
    held = lib._held
    assert b"/smolpack/agent" in held and str(tmp_path / "overlay.qcow2").encode() in held
    arrays = [h for h in held if isinstance(h, ctypes.Array)]
    assert [list(x) for x in arrays] == [
        [b"example.com", None], [b"1.1.1.1", None], [None], [None]
    ]  # fmt: skip
    # again in the same process: libkrun's logger is set up once (a second setup aborts)
    (tmp_path / "again").mkdir()
    a, b = socket.socketpair()
    try:
        configure(KrunLib(find_runtime_libs()), spec_for(tmp_path / "again"), a.fileno())
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("damaged", [False, True])
def test_cached_memory_fills_pages_that_are_disk_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damaged: bool
) -> None:
    """Synthetic only: a real krun state is built and restored in the nested-KVM lane."""
    from payload_helpers import sample_manifest
    from test_disk_refs import make_inputs

    from smolpack.engine.krun_run import _cached_memory
    from smolpack.payload import PayloadWriter, open_payload

    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    image, disk, ram = make_inputs(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "memory.bin").write_bytes(ram)
    for name in ("checkpoint.bin", "manifest.bin", "cpu.json"):
        (state / name).write_bytes(b"{}")
    ref = state_ref(host_arch="x86_64", host_os="linux", own_disk=True)
    sources = state_sections(ref, state, disk, memory_disk=disk)
    if damaged:
        refs = DiskRefs.decode((state / "memory.refs").read_bytes(), image_size=len(ram),
                               disk_size=disk.stat().st_size, label="t")  # fmt: skip
        (page, block, count), *rest = refs.runs
        bad = DiskRefs(refs.image_size, refs.pages_sha256, ((page, block + 1, count), *rest))
        (state / "memory.refs").write_bytes(bad.encode())
    assert (state / "memory.data").stat().st_size == 20 * 4096  # only the guest's own pages
    with PayloadWriter(tmp_path / "p.smolmachine") as w:
        w.add_bytes("manifest", SectionKind.MANIFEST, sample_manifest().to_json())
        for source in sources:
            w.add_file(source.name, source.kind, source.path, codec=source.codec)
    layout = StateSections.from_ref(ref)
    with open_payload(tmp_path / "p.smolmachine") as payload:
        data_size = payload.sections[layout.memory].raw_size
        mmap = MemoryMap.decode(payload.read_section(layout.memory_map), data_size=data_size,
                                label="t")  # fmt: skip
        if damaged:
            with pytest.raises(EngineError, match="do not match their digest"):
                _cached_memory(payload, layout, mmap)
            return
        got = _cached_memory(payload, layout, mmap)
    assert got.read_bytes() == ram


def test_stop_reason_says_what_a_logged_vm_exit_means(tmp_path: Path) -> None:
    # libkrun's own info lines (as seen in the lane: a guest that triple-faulted, console empty)
    vm = _vmm_that_exits(tmp_path, 0)
    vm.log.write_text(
        "[2026-12-02T08:36:19Z INFO  krun_devices::virtio::balloon::device] balloon stats: x\n"
        "[2026-12-02T08:36:56Z INFO  krun_vmm::linux::vstate] Received KVM_EXIT_SHUTDOWN signal\n"
        "[2026-12-02T08:36:56Z INFO  krun_vmm] Vmm is stopping.\n"
    )
    assert vm.stop_reason(10.0) == (
        "the libkrun VM process exited with code 0: its CPU shut down: a triple fault, a guest"
        " kernel crash too early or too broken to print a panic"
    )


def test_stop_reason_skips_libkrun_info_chatter(tmp_path: Path) -> None:
    # lane: a killed VMM's last line was a balloon stats line, quoted as the reason
    vm = _vmm_that_exits(tmp_path, 1)
    vm.log.write_text(
        "[2026-12-02T09:20:20Z WARN  krun_vmm] something to know\n"
        "[2026-12-02T09:20:24Z INFO  krun_devices::virtio::balloon::device] balloon stats: x\n"
    )
    assert vm.stop_reason(10.0) == (
        "the libkrun VM process exited with code 1 ([2026-12-02T09:20:20Z WARN  krun_vmm]"
        " something to know)"
    )
    vm = _vmm_that_exits(tmp_path, 1)
    vm.log.write_text("[2026-12-02T09:20:24Z INFO  krun_vmm] Vmm is stopping.\n")
    assert vm.stop_reason(10.0) == "the libkrun VM process exited with code 1"


def test_stop_reason_reads_only_the_end_of_a_huge_vmm_log(tmp_path: Path) -> None:
    import tracemalloc

    vm = _vmm_that_exits(tmp_path, 1)
    with open(vm.log, "wb") as f:
        f.seek(256 << 20)  # 256 MiB (sparse): libkrun logging in a loop for a long run
        f.write(b"\nvmm: the last word\n")
    tracemalloc.start()
    try:
        reason = vm.stop_reason(10.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "the libkrun VM process exited with code 1 (vmm: the last word)"
    assert peak < 4 << 20  # was: the whole log in memory, twice (bytes, then str)


def test_a_chatty_vmm_leaves_bounded_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The VMM child as configure() leaves it, minus the guest: hvc0 and its own stdio
    # print far more than the cap (a guest printing in a loop, for hours).
    import smolpack.engine.krun as krun
    from smolpack.engine.console_log import CONSOLE_CAP, rotated

    def chatty_child(*args: object, console_fd: int | None = None, **kw: object) -> None:
        status_fd = args[3]
        assert isinstance(status_fd, int)
        spec = args[1]
        assert isinstance(spec, KrunSpec)
        if console_fd is None:  # as configure() opens it without a recorder
            console_fd = os.open(spec.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(status_fd, b"R\n")
        for _ in range(3 * CONSOLE_CAP // 4096):
            os.write(console_fd, b"x" * 4095 + b"\n")
            os.write(1, b"y" * 4095 + b"\n")
        os.write(console_fd, b"the last console line\n")
        os.write(2, b"vmm: the last word\n")
        os._exit(0)

    monkeypatch.setattr(krun, "child_main", chatty_child)
    vm = KrunVm(find_runtime_libs(), spec_for(tmp_path))
    assert vm.stop_reason(10.0) is not None
    vm.close()
    for log in (vm.console_log, vm.log):
        assert log.stat().st_size <= CONSOLE_CAP
        assert rotated(log).stat().st_size <= CONSOLE_CAP
    assert console_tail(vm.console_log, 1) == ["the last console line"]
    assert vm.exit_detail().endswith("(vmm: the last word)")
