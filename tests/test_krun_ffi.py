"""Every libkrun binding against the real library (smolmachines' libkrun.so).

Each function is called with valid arguments (0 or an id back) and invalid ones (the exact
negative errno back, raised as KrunError). Configuration calls only: no guest runs here
(design.md §2: /dev/kvm is kvm_pvm). krun_start_enter is called only with a context that
does not exist, in a subprocess (it renames the calling process).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.engine.krun_ffi import (
    DISK_FORMAT_QCOW2,
    DISK_FORMAT_RAW,
    KERNEL_FORMAT_ELF,
    KERNEL_FORMAT_RAW,
    SNAPSHOT_MEMORY_IMMUTABLE,
    TSI_HIJACK_INET,
    KrunError,
    KrunLib,
    cstr_array,
    prototypes,
)
from smolpack.errors import EngineError
from smolpack.runtime_libs import find_runtime_libs

BAD_CTX = 4_000_000  # never handed out by krun_create_ctx in a test run


@pytest.fixture(scope="module")
def krun() -> KrunLib:
    return KrunLib(find_runtime_libs())


@pytest.fixture()
def ctx(krun: KrunLib) -> int:
    return krun.call("krun_create_ctx")


def errno_of(krun: KrunLib, name: str, *args: object) -> int:
    with pytest.raises(KrunError) as info:
        krun.call(name, *args)
    assert info.value.function == name
    assert name in str(info.value)
    return info.value.errno


def test_every_declared_function_is_exported_and_typed(krun: KrunLib) -> None:
    for name in prototypes():
        fn = getattr(krun.dll, name)
        assert fn.restype is not None, name
        assert fn.argtypes is not None, name
    assert krun.dll.krun_get_last_error.restype is not None


def test_create_and_free_context(krun: KrunLib) -> None:
    a = krun.call("krun_create_ctx")
    b = krun.call("krun_create_ctx")
    assert b > a >= 0
    assert krun.call("krun_free_ctx", a) == 0
    assert errno_of(krun, "krun_free_ctx", a) == errno.ENOENT  # freed twice


def test_vm_config(krun: KrunLib, ctx: int) -> None:
    assert krun.call("krun_set_vm_config", ctx, 2, 256) == 0
    assert errno_of(krun, "krun_set_vm_config", BAD_CTX, 2, 256) == errno.ENOENT


def test_disk_overlay_over_an_absolute_raw_base(krun: KrunLib, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    overlay = tmp_path / "overlay.qcow2"
    assert krun.call("krun_create_disk_overlay", bytes(overlay), bytes(base), DISK_FORMAT_RAW) == 0
    head = overlay.read_bytes()[:4]
    assert head == b"QFI\xfb"  # qcow2 magic
    assert bytes(base) in overlay.read_bytes()[:4096]  # backing path, verbatim
    bad = tmp_path / "bad.qcow2"
    assert errno_of(krun, "krun_create_disk_overlay", bytes(bad), bytes(base), 9) == errno.EINVAL


def test_disk_and_root_remount(krun: KrunLib, ctx: int, tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    # Remount before any disk: refused.
    assert errno_of(krun, "krun_set_root_disk_remount", ctx, b"/dev/vda", b"ext4", None) == (
        errno.EINVAL
    )
    assert krun.call("krun_add_disk2", ctx, b"root", bytes(disk), DISK_FORMAT_QCOW2, False) == 0
    assert errno_of(krun, "krun_add_disk2", ctx, b"r2", bytes(disk), 42, False) == errno.EINVAL
    assert errno_of(krun, "krun_add_disk2", BAD_CTX, b"r", bytes(disk), 0, False) == errno.ENOENT
    assert krun.call("krun_set_root_disk_remount", ctx, b"/dev/vda", b"ext4", None) == 0
    # A second root: refused.
    assert errno_of(krun, "krun_set_root_disk_remount", ctx, b"/dev/vda", None, None) == (
        errno.EINVAL
    )


def test_consoles(krun: KrunLib, ctx: int) -> None:
    r, w = os.pipe()
    try:
        assert krun.call("krun_add_virtio_console_default", ctx, r, w, w) == 0
        console = krun.call("krun_add_virtio_console_multiport", ctx)
        assert console == 1  # the default console is id 0
        assert krun.call("krun_add_console_port_inout", ctx, console, b"smolpack.agent", r, w) == 0
        # Port on a console that is not a multiport one, or does not exist.
        assert errno_of(krun, "krun_add_console_port_inout", ctx, 0, b"x", r, w) == errno.EINVAL
        assert errno_of(krun, "krun_add_console_port_inout", ctx, 7, b"x", r, w) == errno.EINVAL
        assert errno_of(krun, "krun_add_virtio_console_multiport", BAD_CTX) == errno.ENOENT
        assert errno_of(krun, "krun_add_virtio_console_default", BAD_CTX, r, w, w) == errno.ENOENT
        assert krun.call("krun_set_kernel_console", ctx, b"hvc0") == 0
        assert errno_of(krun, "krun_set_kernel_console", BAD_CTX, b"hvc0") == errno.ENOENT
    finally:
        os.close(r)
        os.close(w)


def test_vsock_and_egress_policy(krun: KrunLib, ctx: int) -> None:
    cidrs = cstr_array(["10.0.0.0/8", "1.1.1.1"])
    hosts = cstr_array(["example.com"])
    resolvers = cstr_array(["1.1.1.1"])
    # No vsock yet: the policy has nothing to apply to.
    assert errno_of(krun, "krun_set_egress_policy", ctx, cidrs, None, None) == errno.ENODEV
    assert errno_of(krun, "krun_add_vsock", ctx, 1 << 9) == errno.EINVAL  # unknown TSI bit
    assert krun.call("krun_add_vsock", ctx, TSI_HIJACK_INET) == 0
    assert errno_of(krun, "krun_add_vsock", ctx, TSI_HIJACK_INET) == errno.EEXIST
    assert krun.call("krun_set_egress_policy", ctx, cidrs, None, None) == 0
    assert krun.call("krun_set_egress_policy", ctx, cidrs, hosts, resolvers) == 0
    # Host names without a trusted resolver, nothing at all, a bad CIDR: refused.
    assert errno_of(krun, "krun_set_egress_policy", ctx, None, hosts, None) == errno.EINVAL
    assert errno_of(krun, "krun_set_egress_policy", ctx, None, None, None) == errno.EINVAL
    bad = cstr_array(["10.0.0.0/99"])
    assert errno_of(krun, "krun_set_egress_policy", ctx, bad, None, None) == errno.EINVAL
    assert errno_of(krun, "krun_set_egress_policy", BAD_CTX, cidrs, None, None) == errno.ENOENT


def test_exec_env_workdir(krun: KrunLib, ctx: int) -> None:
    argv, envp = cstr_array([]), cstr_array(["A=1"])
    assert krun.call("krun_set_exec", ctx, b"/smolpack/agent", argv, envp) == 0
    assert krun.call("krun_set_env", ctx, envp) == 0
    assert krun.call("krun_set_workdir", ctx, b"/") == 0
    assert errno_of(krun, "krun_set_exec", BAD_CTX, b"/a", argv, envp) == errno.ENOENT
    assert errno_of(krun, "krun_set_env", BAD_CTX, envp) == errno.ENOENT
    assert errno_of(krun, "krun_set_workdir", BAD_CTX, b"/") == errno.ENOENT


def test_kernel_and_implicit_init(krun: KrunLib, ctx: int, tmp_path: Path) -> None:
    assert krun.call("krun_set_kernel", ctx, b"/k.elf", KERNEL_FORMAT_ELF, None, b"quiet") == 0
    missing = bytes(tmp_path / "missing")
    # A raw x86 kernel is mapped at once: a missing file is refused there and then.
    assert errno_of(krun, "krun_set_kernel", ctx, missing, KERNEL_FORMAT_RAW, None, None) == (
        errno.EINVAL
    )
    assert errno_of(krun, "krun_set_kernel", ctx, b"/k", 77, None, None) == errno.EINVAL
    assert krun.call("krun_disable_implicit_init", ctx) == 0
    assert errno_of(krun, "krun_disable_implicit_init", BAD_CTX) == errno.ENOENT


def test_control_socket_and_snapshot(krun: KrunLib, ctx: int, tmp_path: Path) -> None:
    assert krun.call("krun_set_control_socket", ctx, bytes(tmp_path / "ctl.sock")) == 0
    assert errno_of(krun, "krun_set_control_socket", ctx, None) == errno.EINVAL
    assert errno_of(krun, "krun_set_control_socket", BAD_CTX, b"/x") == errno.ENOENT
    assert krun.call("krun_set_snapshot", ctx, bytes(tmp_path)) == 0
    assert errno_of(krun, "krun_set_snapshot", ctx, None) == errno.EINVAL
    assert errno_of(krun, "krun_set_snapshot", BAD_CTX, b"/x") == errno.ENOENT


def test_snapshot_memory_fd(krun: KrunLib, ctx: int, tmp_path: Path) -> None:
    memory = tmp_path / "memory.bin"
    memory.write_bytes(b"\0" * 16384)
    fd = os.open(memory, os.O_RDONLY)
    try:
        assert krun.call("krun_set_snapshot_memory_fd2", ctx, fd, SNAPSHOT_MEMORY_IMMUTABLE) == 0
        assert errno_of(krun, "krun_set_snapshot_memory_fd2", ctx, fd, 7) == errno.EINVAL
        assert krun.call("krun_set_snapshot_memory_fd", ctx, fd) == 0
        assert errno_of(krun, "krun_set_snapshot_memory_fd", BAD_CTX, fd) == errno.ENOENT
    finally:
        os.close(fd)
    closed = os.open(memory, os.O_RDONLY)
    os.close(closed)
    assert errno_of(krun, "krun_set_snapshot_memory_fd2", ctx, closed, 1) == errno.EBADF
    assert errno_of(krun, "krun_set_snapshot_memory_fd2", ctx, -1, 1) == errno.EBADF


def test_start_enter_without_a_context_returns_enoent() -> None:
    code = (
        "from smolpack.engine.krun_ffi import KrunLib, KrunError\n"
        "from smolpack.runtime_libs import find_runtime_libs\n"
        "lib = KrunLib(find_runtime_libs())\n"
        "try:\n"
        "    lib.call('krun_start_enter', 4000000)\n"
        "except KrunError as e:\n"
        "    print(e.errno, e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{errno.ENOENT} krun_start_enter failed: ENOENT")


def test_undeclared_function_is_refused(krun: KrunLib) -> None:
    with pytest.raises(ValueError, match="not declared"):
        krun.call("krun_set_gpu_options", 0, 0)


def test_nul_in_a_string_is_refused() -> None:
    with pytest.raises(EngineError, match="NUL"):
        cstr_array(["a\0b"])
