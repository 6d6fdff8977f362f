"""Runtime libraries: find and load libkrun + libkrunfw (run and create stages, engine setup).

Used by the krun engine and by `smolpack.kernel` (the guest kernel lives inside libkrunfw).
Search order, first hit wins:

1. `SMOLPACK_LIBKRUN_DIR` -- a directory holding both libraries. When set it is the only
   place searched, so a typo is an error instead of a silent fall-through to another copy.
2. the PyPI package `smolmachines` (files under `site-packages/smol/`), found through its
   installed-file list or its import spec -- never by importing it: its SDK pulls in a
   13 MB native extension we don't need.
3. system library directories (Fedora/Homebrew installs). Upstream libkrun there has no
   snapshot API; the engine decides what that means.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolpack.errors import HostError

ENV_DIR = "SMOLPACK_LIBKRUN_DIR"
LibSource = Literal["env", "smolmachines", "system", "payload"]

# libkrunfw's soname carries its ABI version (5); only that ABI has the kernel calls below.
_LINUX_NAMES = (("libkrun.so", "libkrun.so.1"), ("libkrunfw.so.5",))
_MACOS_NAMES = (("libkrun.dylib", "libkrun.1.dylib"), ("libkrunfw.5.dylib",))
_LINUX_SYSTEM_DIRS = (
    "/usr/local/lib64",
    "/usr/local/lib",
    "/usr/lib64",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
)
_MACOS_SYSTEM_DIRS = ("/opt/homebrew/lib", "/usr/local/lib")
_DIST = "smolmachines"
_MISSING_HINT = f"run `pip install smolmachines` or set {ENV_DIR} to a directory holding them"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeLibs:
    """Where the two runtime libraries were found."""

    # absolute path of libkrun (the VMM library)
    libkrun_path: Path
    # absolute path of libkrunfw (the guest kernel bundle), ABI 5
    libkrunfw_path: Path
    # which search step found them
    source: LibSource


def _names(platform: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return _MACOS_NAMES if platform == "darwin" else _LINUX_NAMES


def _pick(directory: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate.resolve()
    return None


def _from_env(env: Mapping[str, str], platform: str) -> RuntimeLibs | None:
    raw = env.get(ENV_DIR)
    if not raw:
        return None
    directory = Path(raw)
    krun_names, fw_names = _names(platform)
    krun, fw = _pick(directory, krun_names), _pick(directory, fw_names)
    if krun is None or fw is None:
        missing = krun_names[0] if krun is None else fw_names[0]
        raise HostError(
            f"{ENV_DIR}={raw} has no {missing}",
            hint=f"point {ENV_DIR} at a directory holding {krun_names[0]} and {fw_names[0]}",
        )
    return RuntimeLibs(libkrun_path=krun, libkrunfw_path=fw, source="env")


def _smolmachines_dirs() -> list[Path]:
    """Directories of the installed `smolmachines` package, without importing it."""
    dirs: list[Path] = []
    try:
        # Imported here: the frozen launcher leaves importlib.metadata out (no packages).
        import importlib.metadata as metadata
    except ImportError:
        return dirs
    try:
        # A name, not a literal: PyInstaller bundles the dist-info of every distribution
        # named literally in an importlib.metadata call (405 KiB extracted at each start).
        files = metadata.files(_DIST) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.parts[:1] == ("smol",) and f.name.startswith("libkrun"):
            dirs.append(Path(str(f.locate())).parent)
            break
    # find_spec on a top-level name locates the package without executing it.
    spec = importlib.util.find_spec("smol")
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def _from_smolmachines(platform: str) -> RuntimeLibs | None:
    krun_names, fw_names = _names(platform)
    for directory in _smolmachines_dirs():
        krun, fw = _pick(directory, krun_names), _pick(directory, fw_names)
        if krun is not None and fw is not None:
            return RuntimeLibs(libkrun_path=krun, libkrunfw_path=fw, source="smolmachines")
    return None


def _from_system(platform: str, system_dirs: Sequence[str] | None) -> RuntimeLibs | None:
    krun_names, fw_names = _names(platform)
    if system_dirs is None:
        system_dirs = _MACOS_SYSTEM_DIRS if platform == "darwin" else _LINUX_SYSTEM_DIRS
        # find_library asks ldconfig's cache; on Linux it returns a soname, not a path.
        found = [ctypes.util.find_library(n) for n in ("krun", "krunfw")]
        extra = [Path(f) for f in found if f and os.path.isabs(f)]
        system_dirs = [*dict.fromkeys([*(str(p.parent) for p in extra), *system_dirs])]
    for directory in map(Path, system_dirs):
        krun, fw = _pick(directory, krun_names), _pick(directory, fw_names)
        if krun is not None and fw is not None:
            return RuntimeLibs(libkrun_path=krun, libkrunfw_path=fw, source="system")
    return None


def find_runtime_libs(
    *,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    system_dirs: Sequence[str] | None = None,
) -> RuntimeLibs:
    """Locate libkrun and libkrunfw, or raise `HostError` with an install hint."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    libs = (
        _from_env(env, platform)
        or _from_smolmachines(platform)
        or _from_system(platform, system_dirs)
    )
    if libs is None:
        krun_names, fw_names = _names(platform)
        raise HostError(f"{krun_names[0]} and {fw_names[0]} not found", hint=_MISSING_HINT)
    return libs


# -- loading -------------------------------------------------------------------


def load_libkrunfw(libs: RuntimeLibs) -> ctypes.CDLL:
    """dlopen libkrunfw with RTLD_GLOBAL (libkrun resolves its symbols from it) and declare it.

    Must be loaded before libkrun.
    """
    try:
        lib = ctypes.CDLL(str(libs.libkrunfw_path), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise HostError(f"cannot load {libs.libkrunfw_path}: {err}", hint=_MISSING_HINT) from err
    try:
        # char *krunfw_get_kernel(uint64_t *load_addr, uint64_t *entry_addr, size_t *size);
        # Returns a pointer into the library's own data (KERNEL_BUNDLE): owned by libkrunfw,
        # valid while it stays loaded, never freed by the caller. Copy before use.
        get_kernel = lib.krunfw_get_kernel
        # uint32_t krunfw_get_version(void);  the firmware ABI version (5), not Linux's.
        get_version = lib.krunfw_get_version
    except AttributeError as err:
        raise HostError(
            f"{libs.libkrunfw_path} is not a libkrunfw (missing {err})", hint=_MISSING_HINT
        ) from err
    get_kernel.restype = ctypes.c_void_p
    get_kernel.argtypes = [
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    get_version.restype = ctypes.c_uint32
    get_version.argtypes = []
    return lib


def load_libkrun(libs: RuntimeLibs) -> ctypes.CDLL:
    """dlopen libkrunfw (global) then libkrun lazily.

    RTLD_LAZY because smolmachines' libkrun references `virgl_*` functions (GPU only) that no
    library here provides; eager binding would refuse to load it. Function declarations
    belong to the krun engine's binding module.
    """
    load_libkrunfw(libs)
    try:
        return ctypes.CDLL(str(libs.libkrun_path), mode=os.RTLD_LAZY | ctypes.RTLD_LOCAL)
    except OSError as err:
        raise HostError(f"cannot load {libs.libkrun_path}: {err}", hint=_MISSING_HINT) from err
