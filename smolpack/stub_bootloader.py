"""The launcher stub's bootloader: PyInstaller's, with our change (create stage: stub build).

A stock onefile start unpacks libpython, the extension modules and base_library.zip into a
fresh temporary directory, forks a child that runs from there, waits and deletes it: about
half of `./tool --smol-version` (bench/bench_launcher.py). `_bootloader/keep-runtime.patch`
changes the onefile parent so a stub carrying the run-time option
`pyi-smolpack-runtime <key>` unpacks once into `<cache>/runtime/<key>/` and afterwards
starts its onefile child from there: no unpacking, no cleanup. The parent still forks,
forwards signals and waits, as stock, so a SIGKILL of the tool reaches a launcher (the
child) that cleans up after itself.

Built here from the sdist of the installed PyInstaller (fetched with pip, patched with
`patch`, compiled with the C compiler waf finds; ~6 s), cached under a key of the version,
the patch and the target. Where that cannot happen (no compiler, no network, no `patch`)
the stub keeps PyInstaller's stock bootloader and `bootloader()` says why: the stub works
the same, each start just unpacks again. `SMOLPACK_STUB_BOOTLOADER=stock` asks for the
stock one (an A/B for the launcher bench).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import smolpack
from smolpack.cache import cache_root, cached_file
from smolpack.host import host_target

ENV_CHOICE = "SMOLPACK_STUB_BOOTLOADER"  # "stock": PyInstaller's own bootloader
RUNTIME_OPTION = "pyi-smolpack-runtime"  # + " <key>": the bootloader's run-time option


@dataclass(frozen=True, slots=True)
class Bootloader:
    path: Path | None  # our bootloader binary; None: PyInstaller's stock one
    why_stock: str = ""  # why not ours (empty when path is set)

    @property
    def identity(self) -> str:
        """What goes into the stub's cache key."""
        if self.path is None:
            return "stock"
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def patch_file() -> Path:
    return Path(smolpack.__file__).resolve().parent / "_bootloader" / "keep-runtime.patch"


def bootloader(*, retry: bool = False, offline: bool = False) -> Bootloader:
    """Our bootloader for this host, built (or reused from the cache) now; stock if we can't.

    A failed build is remembered beside the cache entry (`<key>.why-stock`), so later stub
    builds do not fetch and compile again; `retry` (`smolpack stub build --force`) does.
    `offline` (`create --offline`): never fetch the sources (nothing is remembered)."""
    if os.environ.get(ENV_CHOICE) == "stock":
        return Bootloader(None, f"{ENV_CHOICE}=stock")
    import PyInstaller  # type: ignore[import-untyped]

    version = PyInstaller.__version__
    key = hashlib.sha256(
        f"{version}\0{host_target()}\0".encode() + patch_file().read_bytes()
    ).hexdigest()
    entries = cache_root() / "bootloaders"
    failed = entries / f"{key}.why-stock"
    if failed.is_file() and not retry:
        return Bootloader(None, failed.read_text().strip())
    if offline and not (entries / key).is_file():
        return Bootloader(None, "--offline: the PyInstaller sources are not fetched")
    try:
        built = cached_file("bootloaders", key, lambda dest: _build(version, dest))
        failed.unlink(missing_ok=True)
        return Bootloader(built)
    except _Unavailable as err:
        with contextlib.suppress(OSError):
            failed.write_text(f"{err}\n")
        return Bootloader(None, str(err))


class _Unavailable(Exception):
    """Our bootloader cannot be built on this host (the message says why, in a few words)."""


def _build(version: str, dest: Path) -> None:
    # The tools first: no download for a host that could not use it.
    if shutil.which("patch") is None:
        raise _Unavailable("`patch` is not installed")
    if not any(shutil.which(cc) for cc in ("gcc", "clang", "cc")):
        raise _Unavailable("no C compiler (gcc, clang or cc)")
    with tempfile.TemporaryDirectory(prefix="smolpack-bootloader-") as tmp:
        work = Path(tmp)
        sdist = _fetch_sdist(version, work)
        with tarfile.open(sdist) as tar:
            # the bootloader and the one PyInstaller module its wscript imports
            wanted = ("/bootloader/", "/PyInstaller/_shared_with_waf.py/")
            members = [m for m in tar.getmembers() if any(w in f"{m.name}/" for w in wanted)]
            tar.extractall(work, members=members, filter="data")
        top = work / f"pyinstaller-{version}"
        if not (top / "bootloader" / "waf").is_file():
            raise _Unavailable(f"no bootloader sources in {sdist.name}")
        _run(["patch", "-p1", "-s", "-i", str(patch_file())], top, "patching the bootloader")
        _run(
            [sys.executable, "waf", "configure", "build_release", "--static-zlib"],
            top / "bootloader",
            "compiling the bootloader",
        )
        built = top / "bootloader" / "build" / "release" / "run"
        if not built.is_file():
            raise _Unavailable("waf built no bootloader")
        shutil.copyfile(built, dest)
        dest.chmod(0o755)


def _fetch_sdist(version: str, work: Path) -> Path:
    """The PyInstaller sdist of `version` (its bootloader sources), with pip."""
    _run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
         ":all:", "--timeout", "20", "--retries", "1", "-d", str(work),
         f"pyinstaller=={version}"],
        work, f"fetching the PyInstaller {version} sources",
    )  # fmt: skip
    found = sorted(work.glob(f"pyinstaller-{version}.tar.gz"))
    if not found:
        raise _Unavailable(f"pip fetched no pyinstaller-{version}.tar.gz")
    return found[0]


def _run(argv: list[str], cwd: Path, what: str) -> None:
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise _Unavailable(f"{what} failed: {err}") from err
    if res.returncode != 0:
        lines = (res.stderr + res.stdout).strip().splitlines() or ["no output"]
        raise _Unavailable(f"{what} failed: {lines[-1].strip()}")
