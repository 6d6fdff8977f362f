"""What the restore-vs-cold-boot benchmarks share (bench_restore.py, bench_krun.py).

`bench_pack` builds one pack from a busybox rootfs (examples/make-busybox-rootfs.sh) in a
temporary directory with its own cache; `first_byte` times one `smolpack run` to its first
byte of output; `alternate` warms up, then runs each kind of run once per round, in turn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TypeVar

ROOT = Path(__file__).resolve().parents[1]
SMOLPACK = [sys.executable, "-m", "smolpack"]
SMOLFILE = (
    'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
    'init = ["echo warm > /root/warm"]\n'
)
T = TypeVar("T")


class BenchPack(NamedTuple):
    pack: Path
    env: dict[str, str]  # the caller's environment with SMOLPACK_CACHE_DIR in the work dir
    create_s: float  # how long `smolpack create` took


@contextmanager
def bench_pack(prefix: str, create_flags: Sequence[str] = ()) -> Iterator[BenchPack]:
    """A pack made by `smolpack create -q CREATE_FLAGS`; the directory goes on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        env = {**os.environ, "SMOLPACK_CACHE_DIR": str(work / "cache")}
        subprocess.run([ROOT / "examples/make-busybox-rootfs.sh", work / "rootfs"], check=True)
        (work / "Smolfile").write_text(SMOLFILE)
        pack = work / "bench.smolmachine"
        start = time.perf_counter()
        create = [*SMOLPACK, "create", "-q", *create_flags, "-o", str(pack), str(work)]
        subprocess.run(create, check=True, env=env)
        yield BenchPack(pack, env, time.perf_counter() - start)


def run_cmd(pack: Path, flags: Sequence[str]) -> list[str]:
    """`smolpack run FLAGS PACK -- echo ready`."""
    return [*SMOLPACK, "run", *flags, str(pack), "--", "echo ready"]


def first_byte(cmd: list[str], env: dict[str, str], *, stderr: bool) -> tuple[float, str]:
    """(seconds from start to the first byte of output, stderr: "" unless `stderr`).

    Exits the benchmark if the run fails or its output does not start with "r"."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - start
    proc.stdout.read()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
    if proc.wait() != 0 or first != b"r":
        said = f": {err}" if stderr else ""
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode}){said}")
    return took, err


def alternate(
    kinds: Mapping[str, list[str]],
    rounds: int,
    measure: Callable[[list[str]], T],
    warm: Iterable[str],
) -> dict[str, list[T]]:
    """Each kind's command measured `rounds` times, the kinds in turn within each round,
    after one unmeasured run of each kind in `warm` (fills the caches)."""
    for kind in warm:
        measure(kinds[kind])
    runs: dict[str, list[T]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind, cmd in kinds.items():
            runs[kind].append(measure(cmd))
    return runs
