"""smolpack.runtime_libs: search order env > smolmachines > system, errors, real loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.errors import HostError
from smolpack.runtime_libs import RuntimeLibs, find_runtime_libs, load_libkrun, load_libkrunfw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed() -> RuntimeLibs:
    return find_runtime_libs(env={})


def linked_dir(tmp_path: Path, libs: RuntimeLibs) -> Path:
    d = tmp_path / "libs"
    d.mkdir()
    (d / "libkrun.so").symlink_to(libs.libkrun_path)
    (d / "libkrunfw.so.5").symlink_to(libs.libkrunfw_path)
    return d


def without_site(code: str) -> object:
    """Run `code` with `python -S` (no site-packages: smolmachines invisible); JSON result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SMOLPACK_LIBKRUN_DIR", None)
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(res.stdout)


def test_smolmachines_found_without_importing_it(installed: RuntimeLibs) -> None:
    assert installed.source == "smolmachines"
    assert installed.libkrun_path.name == "libkrun.so"
    assert installed.libkrunfw_path.name == "libkrunfw.so.5"
    assert installed.libkrun_path.parent.name == "smol"
    assert installed.libkrun_path.is_file() and installed.libkrunfw_path.is_file()
    code = (
        "import sys; from smolpack.runtime_libs import find_runtime_libs as f; f(env={});"
        "print('smol' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout == "False\n"


def test_env_dir_wins(installed: RuntimeLibs, tmp_path: Path) -> None:
    d = linked_dir(tmp_path, installed)
    libs = find_runtime_libs(env={"SMOLPACK_LIBKRUN_DIR": str(d)})
    assert libs == RuntimeLibs(
        libkrun_path=installed.libkrun_path,  # symlinks resolved
        libkrunfw_path=installed.libkrunfw_path,
        source="env",
    )


def test_env_dir_missing_a_library_is_an_error_not_a_fallthrough(tmp_path: Path) -> None:
    (tmp_path / "libkrun.so").write_bytes(b"")
    with pytest.raises(HostError) as exc:
        find_runtime_libs(env={"SMOLPACK_LIBKRUN_DIR": str(tmp_path)})
    assert exc.value.exit_code == 4
    assert str(exc.value) == (
        f"SMOLPACK_LIBKRUN_DIR={tmp_path} has no libkrunfw.so.5; point SMOLPACK_LIBKRUN_DIR"
        " at a directory holding libkrun.so and libkrunfw.so.5"
    )


def test_macos_names(tmp_path: Path) -> None:
    for name in ("libkrun.dylib", "libkrunfw.5.dylib"):
        (tmp_path / name).write_bytes(b"")
    libs = find_runtime_libs(env={"SMOLPACK_LIBKRUN_DIR": str(tmp_path)}, platform="darwin")
    assert (libs.libkrun_path.name, libs.libkrunfw_path.name) == (
        "libkrun.dylib",
        "libkrunfw.5.dylib",
    )


def test_system_dirs_when_smolmachines_absent(installed: RuntimeLibs, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    d = linked_dir(tmp_path, installed)
    got = without_site(
        "import json; from smolpack.runtime_libs import find_runtime_libs as f;"
        f"l = f(env={{}}, system_dirs=[{str(empty)!r}, {str(d)!r}]);"
        "print(json.dumps([l.source, str(l.libkrun_path)]))"
    )
    assert got == ["system", str(installed.libkrun_path)]


def test_missing_everywhere_names_the_fix(tmp_path: Path) -> None:
    got = without_site(
        "import json; from smolpack.runtime_libs import find_runtime_libs as f\n"
        "try:\n"
        f"    f(env={{}}, system_dirs=[{str(tmp_path)!r}])\n"
        "except Exception as e:\n"
        "    print(json.dumps([type(e).__name__, str(e)]))"
    )
    assert got == [
        "HostError",
        "libkrun.so and libkrunfw.so.5 not found; run `pip install smolmachines`"
        " or set SMOLPACK_LIBKRUN_DIR to a directory holding them",
    ]


def test_loads_the_real_libraries(installed: RuntimeLibs) -> None:
    fw = load_libkrunfw(installed)
    assert fw.krunfw_get_version() == 5
    krun = load_libkrun(installed)  # loads despite unresolved virgl_* (RTLD_LAZY)
    assert hasattr(krun, "krun_create_ctx")


def test_loading_a_non_library_is_a_host_error(tmp_path: Path) -> None:
    bogus = tmp_path / "libkrunfw.so.5"
    bogus.write_bytes(b"not an ELF")
    libs = RuntimeLibs(libkrun_path=bogus, libkrunfw_path=bogus, source="env")
    with pytest.raises(HostError, match=rf"^cannot load {bogus}: .*pip install smolmachines"):
        load_libkrunfw(libs)
