"""smolpack.cache: root selection, produce-once, atomic publish, concurrent first users."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from smolpack.cache import cache_root, cached_file
from smolpack.errors import HostError

KEY = "ab" * 32


def test_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path.home()
    assert cache_root({"SMOLPACK_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c")
    assert cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/smolpack")
    assert cache_root({"XDG_CACHE_HOME": "relative"}) == home / ".cache/smolpack"
    assert cache_root({}) == home / ".cache/smolpack"
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", "/from-env")
    assert cache_root() == Path("/from-env")


def test_produces_once_then_reuses(tmp_path: Path) -> None:
    calls: list[Path] = []

    def produce(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(b"payload")

    first = cached_file("kernel-elf", KEY, produce, root=tmp_path)
    second = cached_file("kernel-elf", KEY, produce, root=tmp_path)
    assert first == second == tmp_path / "kernel-elf" / KEY
    assert first.read_bytes() == b"payload"
    assert len(calls) == 1
    assert calls[0].parent == first.parent  # temp file in the same dir: rename is atomic
    assert first.stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in first.parent.iterdir()) == [KEY]  # no temp, no lock left


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "c"))
    path = cached_file("k", KEY, lambda tmp: tmp.write_text("x"))
    assert path == tmp_path / "c" / "k" / KEY


@pytest.mark.parametrize("partial", [False, True])
def test_failing_producer_leaves_nothing(tmp_path: Path, partial: bool) -> None:
    def produce(tmp: Path) -> None:
        if partial:
            tmp.write_bytes(b"half")
        raise RuntimeError("mkfs failed")

    with pytest.raises(RuntimeError, match="mkfs failed"):
        cached_file("disk", KEY, produce, root=tmp_path)
    assert list((tmp_path / "disk").iterdir()) == []
    # and a later producer still gets to run
    path = cached_file("disk", KEY, lambda tmp: tmp.write_bytes(b"ok"), root=tmp_path)
    assert path.read_bytes() == b"ok"


def test_rejects_keys_that_are_not_digests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lowercase hex digest"):
        cached_file("k", "../../etc/passwd", lambda tmp: None, root=tmp_path)
    with pytest.raises(ValueError, match="bad cache kind"):
        cached_file("../k", KEY, lambda tmp: None, root=tmp_path)


def test_unusable_root_is_a_host_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(HostError) as exc:
        cached_file("k", KEY, lambda tmp: None, root=blocker)
    assert exc.value.exit_code == 4
    assert str(exc.value) == (
        f"cannot create cache directory {blocker}/k: Not a directory;"
        " set SMOLPACK_CACHE_DIR to a writable directory"
    )


def _racer(root: str, log: str, start: float) -> None:
    def produce(tmp: Path) -> None:
        with open(log, "a") as f:  # O_APPEND: one line per call, even across processes
            f.write(f"{os.getpid()}\n")
        time.sleep(0.2)  # hold the lock long enough for every racer to pile up on it
        tmp.write_bytes(b"K" * 100_000)

    time.sleep(max(0.0, start - time.time()))
    path = cached_file("race", KEY, produce, root=Path(root))
    assert path.read_bytes() == b"K" * 100_000


def test_concurrent_first_users_produce_once(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), str(log), start)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 8
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == [KEY]
