"""The launcher stub: build it with PyInstaller for this host, find it for other hosts.

Stage: create (payload → stub). A stub is `stub/launcher.py` frozen as a PyInstaller onefile
executable; `smolpack.embed` then adds the payload to a copy of it. One stub per target:

    linux-x86_64   linux-aarch64   macos-arm64

PyInstaller is not a cross-compiler, so this host builds only its own target; stubs for the
others are built on those hosts (release/build-stubs.sh, the CI matrix in release/) and found
in `SMOLPACK_STUB_DIR/<target>/smolstub`, in the package (`smolpack/_stubs/<target>/`,
filled by the release workflow) or in the cache (`<cache>/stubs/<target>/smolstub`).

Why these PyInstaller options (measured on the 2-core dev VM, QEMU engine imports):
- `--onefile --strip` plus `STUB_EXCLUDES`: 4.2 MB and ~90 ms to `--smol-version`, against
  8.3 MB and ~140 ms with the defaults (libcrypto via _hashlib, CJK codecs, unicodedata,
  decimal... which the run path never imports; hashlib falls back to the builtin sha256).
- our bootloader (stub_bootloader.py) unpacks the runtime once per stub and user, then
  starts from it: `--smol-version` 48.5 -> 24.1 ms (bench_launcher, A/B). So the
  entries it unpacks are deflated (4.3 MB; the first start takes ~40 ms more), and only
  the modules' archive, read at every start, is stored. With PyInstaller's stock
  bootloader every start unpacks, so everything is stored (`STORED`: 10.4 MB, ~30 % less
  start time than deflated).
- no runtime hook for `inspect`: PyInstaller's (pyi_rth_inspect) imports inspect and
  zipfile and lists base_library.zip at every start, to fix `inspect.getsourcefile` for
  frozen code, which the launcher never calls (`_no_inspect_hook`).
- the build takes ~10 s; the result is cached under a key of everything that goes in it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import smolpack
from smolpack.cache import cache_root, cached_file
from smolpack.engine import registry
from smolpack.errors import HostError, UsageError
from smolpack.host import host_target
from smolpack.stub_bootloader import RUNTIME_OPTION, Bootloader, bootloader

TARGETS = ("linux-x86_64", "linux-aarch64", "macos-arm64")
ENV_STUB_DIR = "SMOLPACK_STUB_DIR"
STUB_NAME = "smolstub"
# Bump when the way a stub is built changes (it is part of the cache key).
STUB_RECIPE = "4"

# Standard-library modules the launcher never imports but PyInstaller would bundle because
# something imports them optionally. Each one excluded is size and extraction time saved
# at every start; tests/test_stub.py runs the frozen stub through every launcher path.
STUB_EXCLUDES = (
    "_hashlib", "_ssl", "ssl", "bz2", "_bz2", "lzma", "_lzma", "decimal", "_decimal",
    "_pydecimal", "pickle", "_pickle", "csv", "_csv", "unicodedata", "_multibytecodec",
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
    "zstandard._cffi", "_cffi_backend", "tkinter", "unittest", "pydoc", "doctest", "email",
    "http", "xml", "xmlrpc", "html", "asyncio", "multiprocessing", "concurrent", "sqlite3",
    "importlib.metadata", "tarfile", "gzip", "lib2to3", "distutils", "setuptools",
    "pkg_resources", "statistics", "_statistics", "_datetime", "datetime", "calendar",
    "_strptime", "argparse", "gettext", "difflib", "click", "lief", "PyInstaller",
)  # fmt: skip

# The create stage's engine-neutral side of saving a state: engines name these only in type
# annotations (which PyInstaller's scan follows) and import their own save step by name.
BUILD_EXCLUDES = ("smolpack.engine.saving", "smolpack.build_steps")

# The krun engine's run path, imported only when a run picks krun (krun_engine.start): name
# them so PyInstaller's import scan, which skips function-level imports it cannot see
# through, bundles them anyway.
KRUN_MODULES = (
    "smolpack.engine.krun",
    "smolpack.engine.krun_ffi",
    "smolpack.engine.krun_run",
    "smolpack.engine.krun_state",
    "smolpack.pack_libs",
)
# Every engine (found by name, `engine.registry`: no import statement names them) and the
# QEMU engine's run path.
ENGINE_MODULES = (*registry.ENGINES.values(), "smolpack.engine.qemu", "smolpack.engine.qemu_run")

# The entry script; `stub/launcher.py` in a source checkout holds the same code.
ENTRY_SCRIPT = '''\
"""Entry script of the launcher stub (frozen by PyInstaller: `smolpack stub build`).

Everything lives in `smolpack.launcher`; this file only calls it, so the same code runs
frozen and from a checkout (`python stub/launcher.py` needs a pack: see smolpack.launcher).
"""

from smolpack.launcher import main

main()
'''


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r} (use one of {', '.join(TARGETS)})")
    return target


def find_stub(
    target: str, note: Callable[[str], None] | None = None, *, offline: bool = False
) -> Path:
    """The stub for `target`: given, shipped, or built here for this host (else HostError)."""
    check_target(target)
    env_dir = os.environ.get(ENV_STUB_DIR)
    if env_dir:
        candidate = Path(env_dir) / target / STUB_NAME
        if candidate.is_file():
            return candidate
    # Shipped with the package by the release workflow (release/workflows/release.yml).
    shipped = Path(smolpack.__file__).resolve().parent / "_stubs" / target / STUB_NAME
    if shipped.is_file():
        return shipped
    if target == host_target():
        return build_stub(note=note, offline=offline)
    published = cache_root() / "stubs" / target / STUB_NAME
    if published.is_file():
        return published
    where = f"{ENV_STUB_DIR}/{target}/{STUB_NAME}"
    raise HostError(
        f"no launcher stub for {target} on this {host_target()} host",
        hint=f"build it on a {target} host with `smolpack stub build -o {STUB_NAME}` and put it"
        f" at {where} (or at {published})",
    )


def _sources() -> list[Path]:
    package = Path(smolpack.__file__).resolve().parent
    return sorted(package.rglob("*.py"))


def stub_key(boot: Bootloader) -> str:
    """Digest of everything that goes into this host's stub (built with `boot`)."""
    import PyInstaller  # type: ignore[import-untyped]

    h = hashlib.sha256()
    h.update(f"recipe {STUB_RECIPE} smolpack {smolpack.__version__}\n".encode())
    h.update(f"bootloader {boot.identity}\n".encode())
    h.update(
        f"{host_target()} python {sys.version} pyinstaller {PyInstaller.__version__}\n".encode()
    )
    modules = STUB_EXCLUDES + BUILD_EXCLUDES + KRUN_MODULES + ENGINE_MODULES
    h.update(" ".join(modules).encode() + ENTRY_SCRIPT.encode())
    package = Path(smolpack.__file__).resolve().parent
    for path in _sources():
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_stub(
    *, force: bool = False, note: Callable[[str], None] | None = None, offline: bool = False
) -> Path:
    """Build (or reuse from the cache) the launcher stub for this host. `note` hears why the
    stub has PyInstaller's stock bootloader, when it has (stub_bootloader.py); `offline`:
    fetch nothing for it."""
    try:
        import PyInstaller.__main__  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as err:
        raise HostError(
            "PyInstaller is not installed", hint="run `pip install pyinstaller`"
        ) from err
    boot = bootloader(retry=force, offline=offline)
    if boot.path is None and note is not None:
        note(f"the stub unpacks its runtime at every start: stock PyInstaller bootloader"
             f" ({boot.why_stock}; `smolpack stub build --force` tries again)")  # fmt: skip
    key = stub_key(boot)
    entry = cache_root() / "stubs" / key
    if force and entry.exists():
        entry.unlink()
    return cached_file("stubs", key, lambda dest: _freeze(dest, boot, key))


def _no_inspect_hook(hooks: Path) -> Path:
    """A hooks dir whose runtime hook for `inspect` does nothing.

    User hook dirs come before PyInstaller's own, and the first runtime hooks defined for
    a module win, so this replaces pyi_rth_inspect (an empty list would not: it defines
    nothing). Measured: bench/bench_launcher.py.
    """
    (hooks / "rthooks").mkdir(parents=True)
    (hooks / "rthooks.dat").write_text("{'inspect': ['pyi_rth_smolpack_inspect.py']}\n")
    (hooks / "rthooks" / "pyi_rth_smolpack_inspect.py").write_text(
        "# smolpack: no inspect.getsourcefile fix-up (see smolpack/stub_build.py)\n"
    )
    return hooks


def _freeze(dest: Path, boot: Bootloader, key: str) -> None:
    with tempfile.TemporaryDirectory(prefix="smolpack-stub-") as tmp:
        work = Path(tmp)
        script = work / "launcher.py"
        script.write_text(ENTRY_SCRIPT)
        package_parent = Path(smolpack.__file__).resolve().parent.parent
        argv = [
            sys.executable, "-m", "PyInstaller.utils.cliutils.makespec", "--onefile",
            "--strip", "--log-level", "ERROR", "--name", STUB_NAME,
            "--specpath", str(work), "--paths", str(package_parent),
            # lazily imported by the runner: make sure the engines and zstd are in
            "--hidden-import", "zstandard",
        ]  # fmt: skip
        for module in ENGINE_MODULES + KRUN_MODULES:
            argv += ["--hidden-import", module]
        for module in STUB_EXCLUDES + BUILD_EXCLUDES:
            argv += ["--exclude-module", module]
        argv += ["--additional-hooks-dir", str(_no_inspect_hook(work / "hooks"))]
        argv.append(str(script))
        res = subprocess.run(argv, capture_output=True, text=True, cwd=work)
        if res.returncode == 0:
            spec = _edit_spec(work / f"{STUB_NAME}.spec", boot, key)
            argv = [
                sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "ERROR",
                "--distpath", str(work / "dist"), "--workpath", str(work / "build"), str(spec),
            ]  # fmt: skip
            res = subprocess.run(argv, capture_output=True, text=True, cwd=work)
        built = work / "dist" / STUB_NAME
        if res.returncode != 0 or not built.is_file():
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostError(f"PyInstaller failed to build the launcher stub: {last}")
        shutil.copyfile(built, dest)


# Which archive entries are zlib-deflated (EXE's `cdict`). The stock bootloader unpacks
# libpython and the extension modules (~9.5 MB) at every start, and inflating them was ~30 %
# of `--smol-version` (bench/bench_launcher.py): all stored (10.4 MB). Ours unpacks them once:
# deflated (4.3 MB), all but the modules' archive, which every start reads.
STORED = "cdict={'BINARY': False, 'EXTENSION': False, 'DATA': False, 'PYMODULE': False},"
UNPACKED_ONCE = "cdict={'BINARY': True, 'EXTENSION': True, 'DATA': True, 'PYMODULE': False},"


def _edit_spec(spec: Path, boot: Bootloader, key: str) -> Path:
    """`spec` with what PyInstaller has no CLI option for: EXE's `cdict` (which entries are
    deflated) and, with our bootloader, that bootloader and its run-time option naming the
    runtime by the stub's key."""
    text = spec.read_text()
    cdict = STORED if boot.path is None else UNPACKED_ONCE
    edits = {f"    name='{STUB_NAME}',\n": f"    {cdict}\n    name='{STUB_NAME}',\n"}
    if boot.path is not None:
        option = f"[('{RUNTIME_OPTION} {key}', None, 'OPTION')]"
        edits["    a.datas,\n    [],\n"] = f"    a.datas,\n    {option},\n"
        edits["exe = EXE(\n"] = (
            f"EXE._bootloader_file = lambda self, exe, extension=None: {str(boot.path)!r}\n"
            "exe = EXE(\n"
        )
    for old, new in edits.items():
        if text.count(old) != 1:
            raise HostError(f"unexpected PyInstaller spec layout in {spec.name}: {old.strip()!r}")
        text = text.replace(old, new)
    spec.write_text(text)
    return spec
