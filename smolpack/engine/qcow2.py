"""An empty qcow2 image, written without qemu-img (run stage: each run's disk overlay).

Debian's qemu-system-x86 only *recommends* qemu-utils, so a packed tool cannot count on
`qemu-img` at run time; and spawning it cost a process start per run. An empty qcow2 is a
fixed layout; this writes the bytes `qemu-img create -f qcow2 FILE SIZE` (7.2) writes, minus
its optional feature-name table (docs/interop/qcow2.txt in QEMU's tree):

| cluster | holds                                                        |
|---------|--------------------------------------------------------------|
| 0       | header, version 3, 64 KiB clusters, 16-bit refcounts          |
| 1       | refcount table: one entry, the refcount block at cluster 2   |
| 2       | refcount block: clusters 0..3 used once each                 |
| 3...    | L1 table: `ceil(size / 512 MiB)` zero entries (no data yet)  |

All integers big-endian. The backing file is not named here: QEMU is given it on the command
line (`qemu.qemu_argv`), so no path to the pack is ever written into an overlay.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
_L2_ENTRIES = CLUSTER // 8  # one L1 entry maps this many clusters
HEADER_LENGTH = 112  # v3 header with the compression-type byte (QEMU >= 5.1)
# magic version backing_off backing_len cluster_bits size crypt l1_size l1_off
# rc_table_off rc_table_clusters nb_snapshots snapshots_off incompat compat autoclear
# refcount_order header_length compression_type (+7 pad)
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQIIB7x")


def l1_entries(size: int) -> int:
    return -(-size // (CLUSTER * _L2_ENTRIES))


def empty_qcow2(size: int) -> bytes:
    """The bytes of an empty qcow2 image of `size` virtual bytes."""
    l1_size = l1_entries(size)
    used = 3 + max(1, -(-l1_size * 8 // CLUSTER))  # clusters in use (one refcount block)
    if not 0 < size <= 1 << 50 or used > CLUSTER // 2:
        raise ValueError(f"no qcow2 overlay for a disk of {size} bytes")
    header = _HEADER.pack(
        b"QFI\xfb", 3, 0, 0, CLUSTER_BITS, size, 0, l1_size, 3 * CLUSTER,
        CLUSTER, 1, 0, 0, 0, 0, 0, 4, HEADER_LENGTH, 0,
    )  # fmt: skip
    out = bytearray(3 * CLUSTER + l1_size * 8)
    out[: len(header)] = header  # the zero bytes after it end the (empty) extension list
    struct.pack_into(">Q", out, CLUSTER, 2 * CLUSTER)  # refcount table[0] -> block
    struct.pack_into(f">{used}H", out, 2 * CLUSTER, *[1] * used)  # each used once
    return bytes(out)


def write_empty_qcow2(path: Path, size: int) -> None:
    """Create `path` (must not exist) as an empty qcow2 image of `size` bytes."""
    data = empty_qcow2(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
