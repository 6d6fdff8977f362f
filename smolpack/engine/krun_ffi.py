"""ctypes bindings for the libkrun functions smolpack calls (run + create stages, krun engine).

One place declares every libkrun function we call, with `argtypes`/`restype` and its C
prototype. libkrun ships no header in the `smolmachines` wheel; the prototypes come from:

- [H] `include/libkrun.h` of the smol-machines libkrun fork (the fork the `smolmachines`
  package builds): every function below except the two `krun_set_snapshot_memory_fd*`.
- [S] `src/libkrun/src/lib.rs` of that fork (the `#[no_mangle] extern "C"` definitions):
  `krun_set_snapshot`, `krun_set_control_socket`, `krun_create_disk_overlay`,
  `krun_get_last_error`, and which arguments may be NULL (most `const char *` arguments are
  dereferenced unchecked: never pass NULL where the prototype below does not say so).
- [V] smolvm's caller (`src/bin/...` boot path of smol-machines/smolvm), which calls
  `set_snapshot_memory_fd2(ctx, fd, IMMUTABLE)` with `const IMMUTABLE: u32 = 1` and falls
  back to `set_snapshot_memory_fd(ctx, fd)`. Checked against the installed library by
  tests/test_krun_ffi.py: a closed fd gives -EBADF, flags other than 0/1 give -EINVAL.

Every function returns 0 (or an id) on success and a negative errno on failure; `KrunLib.call`
turns a negative value plus `krun_get_last_error()` into `KrunError`. Loading follows
design.md §2: libkrunfw first with RTLD_GLOBAL, then libkrun with RTLD_LAZY (its `virgl_*`
imports stay unresolved; they are GPU-only). Stdlib only: the launcher imports this lazily.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from smolpack.errors import EngineError, HostError
from smolpack.runtime_libs import RuntimeLibs, load_libkrun

c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
i32, u32, u8, u64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint8, ctypes.c_uint64
c_bool = ctypes.c_bool
c_char_pp = ctypes.POINTER(ctypes.c_char_p)

# Disk formats (KRUN_DISK_FORMAT_*) [H]
DISK_FORMAT_RAW = 0
DISK_FORMAT_QCOW2 = 1
# TSI features for krun_add_vsock (KRUN_TSI_*) [H]
TSI_HIJACK_INET = 1 << 0
TSI_HIJACK_UNIX = 1 << 1
# krun_set_snapshot_memory_fd2 flags [V]: the fd's pages are never written back.
SNAPSHOT_MEMORY_IMMUTABLE = 1
# krun_set_kernel formats (KRUN_KERNEL_FORMAT_*) [H]
KERNEL_FORMAT_RAW = 0
KERNEL_FORMAT_ELF = 1

# name -> (restype, argtypes, C prototype and memory ownership). All return int32_t.
_PROTOTYPES: dict[str, tuple[Any, list[Any], str]] = {
    "krun_create_ctx": (i32, [], "int32_t krun_create_ctx(void);  -> ctx id or -errno [H]"),
    "krun_free_ctx": (i32, [u32], "int32_t krun_free_ctx(uint32_t ctx_id);  [H]"),
    "krun_set_vm_config": (
        i32,
        [u32, u8, u32],
        "int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib); [H]",
    ),
    "krun_create_disk_overlay": (
        i32,
        [c_char_p, c_char_p, u32],
        "int32_t krun_create_disk_overlay(const char *overlay_path, const char *base_path,"
        " uint32_t base_format);  no ctx; base_path must be absolute (written verbatim"
        " into the qcow2 header) [H][S]",
    ),
    "krun_add_disk2": (
        i32,
        [u32, c_char_p, c_char_p, u32, c_bool],
        "int32_t krun_add_disk2(uint32_t ctx_id, const char *block_id, const char *disk_path,"
        " uint32_t disk_format, bool read_only);  strings copied [H][S]",
    ),
    "krun_set_root_disk_remount": (
        i32,
        [u32, c_char_p, c_char_p, c_char_p],
        "int32_t krun_set_root_disk_remount(uint32_t ctx_id, const char *device,"
        " const char *fstype /* NULL: auto */, const char *options /* NULL ok */);"
        "  -EINVAL unless a disk was added first [H][S]",
    ),
    "krun_add_virtio_console_default": (
        i32,
        [u32, c_int, c_int, c_int],
        "int32_t krun_add_virtio_console_default(uint32_t ctx_id, int input_fd,"
        " int output_fd, int err_fd);  fds must stay open for the VM's life [H]",
    ),
    "krun_set_log_level": (
        i32,
        [u32],
        "int32_t krun_set_log_level(uint32_t level);  0 off, 1 error .. 5 trace; for the"
        " whole process, to its stderr [H]",
    ),
    "krun_add_virtio_console_multiport": (
        i32,
        [u32],
        "int32_t krun_add_virtio_console_multiport(uint32_t ctx_id);  -> console id [H]",
    ),
    "krun_add_console_port_inout": (
        i32,
        [u32, u32, c_char_p, c_int, c_int],
        "int32_t krun_add_console_port_inout(uint32_t ctx_id, uint32_t console_id,"
        " const char *name, int input_fd, int output_fd);  fds kept open by us [H]",
    ),
    "krun_set_kernel_console": (
        i32,
        [u32, c_char_p],
        "int32_t krun_set_kernel_console(uint32_t ctx_id, const char *console_id); [H]",
    ),
    "krun_add_vsock": (
        i32,
        [u32, u32],
        "int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features);"
        "  -EEXIST on a second call [H][S]",
    ),
    "krun_set_egress_policy": (
        i32,
        [u32, c_char_pp, c_char_pp, c_char_pp],
        "int32_t krun_set_egress_policy(uint32_t ctx_id, const char **cidrs,"
        " const char **egress_hosts, const char **dns_resolvers);  NULL-terminated arrays,"
        " each may be NULL; -ENODEV without vsock [H][S]",
    ),
    "krun_set_exec": (
        i32,
        [u32, c_char_p, c_char_pp, c_char_pp],
        "int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path,"
        " const char *const argv[], const char *const envp[]);  envp NULL means the whole"
        " host environment: we always pass an array [H][S]",
    ),
    "krun_set_env": (
        i32,
        [u32, c_char_pp],
        "int32_t krun_set_env(uint32_t ctx_id, const char *const envp[]); [H]",
    ),
    "krun_set_workdir": (
        i32,
        [u32, c_char_p],
        "int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path); [H]",
    ),
    "krun_set_kernel": (
        i32,
        [u32, c_char_p, u32, c_char_p, c_char_p],
        "int32_t krun_set_kernel(uint32_t ctx_id, const char *kernel_path,"
        " uint32_t kernel_format, const char *initramfs, const char *cmdline); [H]",
    ),
    "krun_disable_implicit_init": (
        i32,
        [u32],
        "int32_t krun_disable_implicit_init(uint32_t ctx_id); [H]",
    ),
    "krun_set_control_socket": (
        i32,
        [u32, c_char_p],
        "int32_t krun_set_control_socket(uint32_t ctx_id, const char *socket_path);"
        "  the VMM binds it after building the VM [H][S]",
    ),
    "krun_set_snapshot": (
        i32,
        [u32, c_char_p],
        "int32_t krun_set_snapshot(uint32_t ctx_id, const char *snapshot_dir);"
        "  restore instead of booting; the dir is read at krun_start_enter [S]",
    ),
    "krun_set_snapshot_memory_fd": (
        i32,
        [u32, c_int],
        "int32_t krun_set_snapshot_memory_fd(uint32_t ctx_id, int fd);  private copy [V]",
    ),
    "krun_set_snapshot_memory_fd2": (
        i32,
        [u32, c_int, u32],
        "int32_t krun_set_snapshot_memory_fd2(uint32_t ctx_id, int fd, uint32_t flags);"
        "  flags 1 = immutable: mapped MAP_PRIVATE, faults in lazily; needs"
        " SMOLVM_FORKABLE=1 in the environment at krun_start_enter [V]",
    ),
    "krun_start_enter": (
        i32,
        [u32],
        "int32_t krun_start_enter(uint32_t ctx_id);  never returns once the VM runs: the"
        " VMM _exit()s with the guest's code (no atexit, no stdio flush) [H]",
    ),
}


class KrunError(EngineError):
    """A libkrun call failed: the function, the errno and libkrun's own explanation."""

    def __init__(self, function: str, rc: int, detail: str | None) -> None:
        name = errno.errorcode.get(-rc, str(-rc))
        text = f"{function} failed: {name} ({os.strerror(-rc)})"
        super().__init__(text + (f": {detail}" if detail else ""))
        self.function = function
        self.errno = -rc


_T = TypeVar("_T")


class KrunLib:
    """The loaded libkrun with every function we call declared."""

    def __init__(self, libs: RuntimeLibs) -> None:
        self.libs = libs
        self.dll = load_libkrun(libs)
        # Strings and arrays handed to libkrun: it may keep the pointers (exec argv/envp,
        # egress lists) until the VM starts, so they live as long as this object.
        self._held: list[object] = []
        for name, (restype, argtypes, _proto) in _PROTOTYPES.items():
            try:
                fn = getattr(self.dll, name)
            except AttributeError as err:
                raise HostError(
                    f"{libs.libkrun_path} has no {name} (not the smolmachines libkrun fork)",
                    hint="run `pip install smolmachines` or use --smol-engine=qemu",
                ) from err
            fn.restype = restype
            fn.argtypes = argtypes
        # const char *krun_get_last_error(void);  thread-local, owned by libkrun, valid
        # until the next libkrun call on this thread; NULL when there is nothing to say. [H]
        self.dll.krun_get_last_error.restype = ctypes.c_char_p
        self.dll.krun_get_last_error.argtypes = []

    def last_error(self) -> str | None:
        raw = self.dll.krun_get_last_error()
        return raw.decode(errors="replace") if raw else None

    def hold(self, value: _T) -> _T:
        """Keep `value` alive for the context's life (returns it)."""
        self._held.append(value)
        return value

    def call(self, name: str, *args: Any) -> int:
        """Call `name`; a negative result raises KrunError, anything else is returned."""
        if name not in _PROTOTYPES:
            raise ValueError(f"{name} is not declared in krun_ffi")
        rc = int(getattr(self.dll, name)(*args))
        if rc < 0:
            raise KrunError(name, rc, self.last_error())
        return rc


def cstr(text: str | os.PathLike[str]) -> bytes:
    """A NUL-free C string (libkrun would truncate at an embedded NUL)."""
    data = os.fsencode(text)
    if b"\0" in data:
        raise EngineError(f"argument for libkrun contains a NUL byte: {data[:40]!r}")
    return data


def cstr_array(items: Sequence[str]) -> Any:
    """A NULL-terminated `const char *[]`; keep the result alive while libkrun uses it."""
    array = (ctypes.c_char_p * (len(items) + 1))()
    for i, item in enumerate(items):
        array[i] = cstr(item)
    array[len(items)] = None
    return array


def prototypes() -> dict[str, str]:
    """Function name -> C prototype (for docs and tests)."""
    return {name: proto for name, (_r, _a, proto) in _PROTOTYPES.items()}
