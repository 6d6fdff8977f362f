"""Content-addressed cache directory (shared by the create and run stages).

Holds files derived from inputs we can hash -- the guest kernel ELF built from libkrunfw's
blob, later anything the launcher must materialize as a file. An entry lives at
`<root>/<kind>/<key_digest>` and is immutable once there.

Writers are safe against each other and against crashes:
- the first user takes an exclusive `flock` on `<root>/<kind>/.<key>.lock`, re-checks, and
  produces into a temp file in the same directory; fsync + rename publish it whole, so a
  reader sees either nothing or the complete file (rename is atomic within one filesystem);
- on any failure the temp file is removed: nothing half-written survives;
- the lock file is unlinked while held; a waiter that then gets a stale (unlinked) lock
  notices by inode and retries, finding the published entry.

Root: `SMOLPACK_CACHE_DIR`, else `$XDG_CACHE_HOME/smolpack`, else `~/.cache/smolpack`.
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from smolpack.errors import HostError

if TYPE_CHECKING:
    from smolpack.payload import Payload

ENV_ROOT = "SMOLPACK_CACHE_DIR"
# kinds are our own constants; keys are hex digests. Both end up as path components.
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEY_RE = re.compile(r"[0-9a-f]{16,128}")


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The cache root directory (not created here)."""
    env = os.environ if env is None else env
    if env.get(ENV_ROOT):
        return Path(env[ENV_ROOT])
    xdg = env.get("XDG_CACHE_HOME")
    # XDG says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "smolpack"
    return Path.home() / ".cache" / "smolpack"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path`; unlink it on the way out."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (
                held.st_dev,
                held.st_ino,
            ):
                break
        except BaseException:
            os.close(fd)
            raise
        # The previous holder unlinked this inode after we opened it: take the new one.
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cached_file(
    kind: str,
    key_digest: str,
    produce: Callable[[Path], object],
    *,
    root: Path | None = None,
    mode: int = 0o444,
) -> Path:
    """Return the cache entry `kind/key_digest`, calling `produce(tmp_path)` if it is absent.

    `produce` writes the complete content to the (empty, already created) path it is given
    and returns (its return value is ignored); it runs at most once across all concurrent
    callers per entry. `mode`: the entry's permissions (read-only unless a consumer must
    open it for writing).
    """
    if not _KIND_RE.fullmatch(kind):
        raise ValueError(f"bad cache kind {kind!r}")
    if not _KEY_RE.fullmatch(key_digest):
        raise ValueError(f"cache key must be a lowercase hex digest, got {key_digest!r}")
    directory = (cache_root() if root is None else root) / kind
    entry = directory / key_digest
    if entry.is_file():
        return entry
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HostError(
            f"cannot create cache directory {directory}: {err.strerror}",
            hint=f"set {ENV_ROOT} to a writable directory",
        ) from err
    with _exclusive(directory / f".{key_digest}.lock"):
        if entry.is_file():
            return entry
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key_digest}.", suffix=".tmp", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            produce(tmp)
            # Read-only for everyone by default: entries are immutable and may be handed to
            # QEMU as is.
            os.chmod(tmp, mode)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, entry)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(directory)
    return entry


def cached_section(payload: Payload, section: str, kind: str, *, mode: int = 0o444) -> Path:
    """`section` of `payload` as a file of its own (kernel, libraries, krun memory and disk).

    Keyed by the section's SHA-256, so every pack that carries the same bytes shares one
    copy; extracted once, digest-checked on the way (`Payload.copy_section_to`). Absolute,
    because libkrun and QEMU get the path as is.
    """
    digest = payload.sections[section].sha256.hex()
    entry = cached_file(kind, digest, lambda tmp: payload.copy_section_to(section, tmp), mode=mode)
    return entry.resolve()


def section_file(payload: Payload, section: str, kind: str) -> tuple[Path, int, int]:
    """Where an engine reads `section` as a file range: (path, offset, size).

    A raw section is read in place, inside the pack: nothing is copied. A compressed one
    (`smolpack create --compress`) is decoded once into the cache by digest, and read from
    there by every later run: compression costs the first run only, never the hot path.
    """
    entry = payload.sections[section]
    if entry.codec == 0:  # Codec.NONE
        offset, size = payload.section_file_range(section)
        return Path(payload.path).resolve(), offset, size
    return cached_section(payload, section, kind), 0, entry.raw_size
