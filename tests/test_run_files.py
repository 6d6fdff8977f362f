"""The per-run directory: removed on every exit path, stale ones swept (smolpack/run_files.py)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.run_files import LOCK, private_run_dir, sweep_stale


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_removed_after_a_run_and_after_an_error(base: Path) -> None:
    with private_run_dir(keep=False) as run:
        assert run.parent == base and (run / LOCK).is_file()
        (run / "overlay.qcow2").write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt), private_run_dir(keep=False) as run:
        raise KeyboardInterrupt
    assert list(base.iterdir()) == []


def test_kept_dir_has_no_lock_and_is_never_swept(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with private_run_dir(keep=True) as kept:
        pass
    assert capsys.readouterr().err == f"smolpack: run files kept in {kept}\n"
    assert list(kept.iterdir()) == []
    with private_run_dir(keep=False):
        assert kept.is_dir()
    assert sweep_stale(base) == [] and kept.is_dir()


def test_a_live_run_is_not_swept(base: Path) -> None:
    with private_run_dir(keep=False) as run:
        assert sweep_stale(base) == []  # our own lock, through another open file
        assert run.is_dir()


def test_the_dir_of_a_killed_run_is_swept_by_the_next_run(base: Path) -> None:
    # A run killed by SIGKILL: its lock dies with it, its directory stays.
    code = (
        "import os, sys, time\n"
        "from smolpack.run_files import private_run_dir\n"
        "with private_run_dir(keep=False) as d:\n"
        "    (d / 'console.log').write_text('x')\n"
        "    print(d, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(base)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    stale = Path(proc.stdout.readline().decode().strip())
    assert sweep_stale(base) == []  # alive: kept
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert (stale / "console.log").is_file()
    with private_run_dir(keep=False) as run:
        assert not stale.exists()
    assert not run.exists()


def test_a_half_created_dir_is_left_alone(base: Path) -> None:
    half = base / "smolpack-run-half"
    half.mkdir()
    (half / f"{LOCK}.new").write_text("")  # its creator has not renamed the lock yet
    assert sweep_stale(base) == [] and half.is_dir()
    fd = os.open(half / f"{LOCK}.new", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(half / f"{LOCK}.new", half / LOCK)
        assert sweep_stale(base) == []  # locked: alive
    finally:
        os.close(fd)
    assert sweep_stale(base) == [half]
