"""The stub's bootloader keeps its unpacked runtime (smolpack/stub_bootloader.py, issue 14).

The real stub, built with our bootloader, run as a user would (`--smol-version`: no pack
and no VM needed). The first start unpacks into <cache>/runtime/<key>/, later starts reuse
it, a broken copy is unpacked again, concurrent first starts agree on one copy, and a cache
that cannot be written falls back to PyInstaller's temporary directory. TMPDIR is checked
empty after every start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import smolpack

from smolpack.stub_bootloader import bootloader

VERSION = b"smolpack launcher "
HOME = "_MEI00000000smolpk"


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory, e2e_env: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("stub") / "smolstub"
    res = smolpack("stub", "build", "-o", str(out), env=e2e_env, timeout=900)
    assert res.returncode == 0, res.stderr.decode()
    # Our bootloader must have been built here: the stub would work without it, slower.
    assert b"stock PyInstaller bootloader" not in res.stderr, res.stderr.decode()
    return out


@pytest.fixture
def user(tmp_path: Path) -> Iterator[dict[str, str]]:
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "SMOLPACK_CACHE_DIR": str(tmp_path / "cache"),
           "TMPDIR": str(tmp_path / "tmp")}  # fmt: skip
    yield env
    assert list((tmp_path / "tmp").iterdir()) == [], "the stub left files in TMPDIR"


def start(stub: Path, env: dict[str, str]) -> None:
    res = subprocess.run([str(stub), "--smol-version"], capture_output=True, env=env, timeout=60)
    assert (res.returncode, res.stdout[: len(VERSION)]) == (0, VERSION), res.stderr.decode()


def runtime_homes(env: dict[str, str]) -> list[Path]:
    return sorted((Path(env["SMOLPACK_CACHE_DIR"]) / "runtime").glob(f"*/{HOME}"))


def test_the_first_start_unpacks_and_later_starts_reuse(stub: Path, user: dict[str, str]) -> None:
    start(stub, user)
    [home] = runtime_homes(user)
    libpython = next(home.glob("libpython3*.so*"))
    before = libpython.stat()
    start(stub, user)
    start(stub, user)
    after = libpython.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # nothing half-written beside it
    assert [p.name for p in home.parent.parent.iterdir()] == [home.parent.name]


def test_a_broken_runtime_is_unpacked_again(stub: Path, user: dict[str, str]) -> None:
    start(stub, user)
    [home] = runtime_homes(user)
    base_library = home / "base_library.zip"
    size = base_library.stat().st_size
    base_library.write_bytes(b"truncated by a cache cleaner")
    start(stub, user)
    assert runtime_homes(user) == [home]
    assert base_library.stat().st_size == size


def test_a_runtime_others_may_write_to_is_never_used(stub: Path, user: dict[str, str]) -> None:
    # A shared cache: a runtime dir open to others could hold anyone's libpython. Planted
    # here: a same-size base_library.zip (the size check alone would pass it).
    start(stub, user)
    [home] = runtime_homes(user)
    base_library = home / "base_library.zip"
    original = base_library.read_bytes()
    base_library.write_bytes(b"x" * len(original))
    home.parent.chmod(0o777)
    start(stub, user)  # would fail on the planted zip
    assert runtime_homes(user) == [home]
    assert base_library.read_bytes() == original
    assert home.parent.stat().st_mode & 0o777 == 0o700


def test_concurrent_first_starts_agree_on_one_runtime(stub: Path, user: dict[str, str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: start(stub, user), range(8)))
    [home] = runtime_homes(user)
    runtime = home.parent.parent
    assert [p.name for p in runtime.iterdir()] == [home.parent.name], "a private copy was left"


def test_an_unwritable_cache_falls_back_to_a_temporary_runtime(
    stub: Path, user: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache should be\n")
    start(stub, {**user, "SMOLPACK_CACHE_DIR": str(blocker)})
    assert blocker.read_text() == "a file where the cache should be\n"


def test_a_stub_with_the_stock_bootloader_still_works_and_says_so(
    tmp_path: Path, e2e_env: dict[str, str], user: dict[str, str]
) -> None:
    # The fallback for hosts that cannot build ours: PyInstaller's own, archive stored.
    out = tmp_path / "stock-stub"
    env = {**e2e_env, "SMOLPACK_STUB_BOOTLOADER": "stock"}
    res = smolpack("stub", "build", "-o", str(out), env=env, timeout=900)
    assert res.returncode == 0, res.stderr.decode()
    assert (
        b"    the stub unpacks its runtime at every start: stock PyInstaller bootloader"
        b" (SMOLPACK_STUB_BOOTLOADER=stock; `smolpack stub build --force` tries again)\n"
    ) in res.stderr
    start(out, user)
    assert runtime_homes(user) == []  # it unpacked into TMPDIR (checked empty afterwards)


def test_without_patch_the_stub_keeps_the_stock_bootloader_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host missing a tool: a PATH with no `patch` (only ldd, which names the host's libc).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ldd").symlink_to(shutil.which("ldd") or "/usr/bin/ldd")
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    boot = bootloader()
    assert (boot.path, boot.why_stock) == (None, "`patch` is not installed")
    # remembered: the next stub build does not try again (and says the same)
    assert bootloader().why_stock == "`patch` is not installed"
    [marker] = (tmp_path / "cache" / "bootloaders").glob("*.why-stock")
    assert marker.read_text() == "`patch` is not installed\n"


def test_offline_never_fetches_and_remembers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))
    boot = bootloader(offline=True)
    assert (boot.path, boot.why_stock) == (
        None,
        "--offline: the PyInstaller sources are not fetched",
    )
    assert not (tmp_path / "cache").exists()
