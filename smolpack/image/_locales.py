"""Which locales a root tree provides (create stage), so a run passes the user's LANG/LC_*
only where the guest can use them (a missing locale makes every program warn or fall back).

- musl-based images (`lib/ld-musl-*.so.1`): any name works (musl's locale support does not
  depend on locale files): recorded as `*`.
- glibc: compiled locales are directories `usr/lib/locale/<name>/` (Debian's `C.utf8`) or
  entries of `usr/lib/locale/locale-archive` (what `locale-gen` writes), whose name table is
  read here (glibc's locarchive.h: a header of u32 fields, then a hash table of
  {hash, name offset, record offset} entries).

Nothing here follows a symlink: the tree comes from an untrusted image and its links point
at the host. Names are normalized as glibc does (codeset lowercased, without punctuation).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from smolpack.machine import normalize_locale as normalize

ANY = "*"
_LOCALE_DIR = ("usr", "lib", "locale")
_ARCHIVE_MAGIC = 0xDE020109
_ARCHIVE_MAX = 1 << 30  # bigger than any real archive (~220 MiB with every locale)


def _lstat(tree: Path, parts: tuple[str, ...]) -> os.stat_result | None:
    """lstat of tree/parts, None if missing or if any component is a symlink."""
    path = tree
    st = None
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
    return st


def image_locales(tree: Path) -> tuple[str, ...]:
    """Normalized names of the locales `tree` provides; (`*`,) for musl; () if none."""
    for libdir in ("lib", "usr/lib"):
        if _lstat(tree, tuple(libdir.split("/"))) is None:
            continue
        names = os.listdir(tree / libdir)
        if any(n.startswith("ld-musl-") and n.endswith(".so.1") for n in names):
            return (ANY,)
    found: set[str] = set()
    if _lstat(tree, _LOCALE_DIR) is not None:
        base = tree.joinpath(*_LOCALE_DIR)
        for name in os.listdir(base):
            st = _lstat(tree, (*_LOCALE_DIR, name, "LC_CTYPE"))
            if st is not None and stat.S_ISREG(st.st_mode):
                found.add(normalize(name))
        st = _lstat(tree, (*_LOCALE_DIR, "locale-archive"))
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= _ARCHIVE_MAX:
            found.update(_archive_names((base / "locale-archive").read_bytes()))
    return tuple(sorted(found))


def _archive_names(data: bytes) -> set[str]:
    """Locale names in a glibc locale-archive (little-endian: the guests we build)."""
    if len(data) < 32 or struct.unpack_from("<I", data)[0] != _ARCHIVE_MAGIC:
        return set()
    table, size = struct.unpack_from("<2I", data, 8)[0], struct.unpack_from("<I", data, 16)[0]
    names = set()
    for i in range(size):
        at = table + 12 * i
        if at + 12 > len(data):
            break
        _hash, name_at, record_at = struct.unpack_from("<3I", data, at)
        end = data.find(b"\0", name_at, name_at + 256)
        if record_at and end > name_at:
            names.add(normalize(data[name_at:end].decode("ascii", "replace")))
    return names
