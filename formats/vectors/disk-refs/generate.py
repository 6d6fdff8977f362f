"""Generate the disk-refs golden vectors (formats/disk-refs.md).

Run `python formats/vectors/disk-refs/generate.py` from the repository root to rewrite the
files beside it. The bytes are assembled here with `struct` from the spec's tables, not with
smolpack: tests/test_disk_refs_vectors.py checks that `split_image` produces the very same
stored image and blob, and that the reader refuses each invalid blob with the message
written here by hand.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = 4096


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE


# 8 disk blocks: block 3 is zero (never named), block 5 repeats block 2 (the lower is named).
DISK = [page(0x10), page(0x11), page(0x12), bytes(PAGE), page(0x14), page(0x12), page(0x16),
        page(0x17)]  # fmt: skip
# 16 image pages: page -> the disk block it copies, or own bytes, or zero.
COPIES = {2: 0, 3: 1, 4: 2, 7: 5, 12: 7, 13: 6}
OWN = {0: page(0xA0), 10: b"own".ljust(PAGE, b"\x01")}
RUNS = [(2, 0, 3), (7, 2, 1), (12, 7, 1), (13, 6, 1)]  # (page, block, count)


def header(*, major: int = 1, minor: int = 0, page_size: int = PAGE, size: int, runs: int,
           sha: bytes) -> bytes:  # fmt: skip
    return struct.pack("<8sHHIQQ32s", b"SMOLDREF", major, minor, page_size, size, runs, sha)


def blob(runs: list[tuple[int, int, int]], **kw: int) -> bytes:
    head = header(size=16 * PAGE, runs=len(runs), sha=PAGES_SHA, **kw)
    return head + b"".join(struct.pack("<QQQ", *run) for run in runs)


IMAGE = b"".join(DISK[COPIES[i]] if i in COPIES else OWN.get(i, bytes(PAGE)) for i in range(16))
STORED = b"".join(OWN.get(i, bytes(PAGE)) for i in range(16))
# the referenced pages' bytes in run order: blocks 0, 1, 2, 2 (block 5's copy), 7, 6
PAGES_SHA = hashlib.sha256(b"".join(DISK[b] for b in (0, 1, 2, 2, 7, 6))).digest()

# name -> (blob, operation, expected message after "<name>: "). decode checks the shape
# against a 16-page image and the 8-block disk; apply also fills and checks the digest.
INVALID = {
    "bad-magic.bin": (b"SMOLDREX" + blob(RUNS)[8:], "decode", "no SMOLDREF header"),
    "short.bin": (b"SMOLDREF" + bytes(8), "decode", "no SMOLDREF header"),
    "major-2.bin": (blob(RUNS, major=2, minor=1), "decode",
                    "disk-refs format 2.1 is not supported (this smolpack reads 1.x)"),
    "page-16k.bin": (blob(RUNS, page_size=16384), "decode", "page size 16384, expected 4096"),
    "size.bin": (header(size=32 * PAGE, runs=0, sha=PAGES_SHA), "decode",
                 "refers to a 131072-byte image, the image has 65536"),
    "truncated.bin": (blob(RUNS)[:-8], "decode", "4 runs do not fit its 152 bytes"),
    "empty-run.bin": (blob([(2, 0, 0)]), "decode",
                      "run 0 is empty, out of order or past the image"),
    "overlap.bin": (blob([(2, 0, 3), (4, 6, 1)]), "decode",
                    "run 1 is empty, out of order or past the image"),
    "past-image.bin": (blob([(15, 0, 2)]), "decode",
                       "run 0 is empty, out of order or past the image"),
    "past-disk.bin": (blob([(2, 7, 2)]), "decode",
                      "run 0 refers to disk blocks 7..8, the disk has 8"),
    "wrong-block.bin": (blob([(2, 0, 3), (7, 4, 1), (12, 7, 1), (13, 6, 1)]), "apply",
                        "the disk blocks its references name do not match their digest"
                        f" (expected {PAGES_SHA.hex()[:12]}…, found "),
}  # fmt: skip


def build() -> dict[str, bytes]:
    files = {"disk.bin": b"".join(DISK), "image.bin": IMAGE, "stored.bin": STORED,
             "refs.bin": blob(RUNS)}  # fmt: skip
    cases = {}
    for name, (data, op, message) in INVALID.items():
        files[f"invalid/{name}"] = data
        cases[name] = {"operation": op, "error": "EngineError", "exit": 121,
                       "message": f"{name}: {message}"}  # fmt: skip
    files["invalid/cases.json"] = (json.dumps(cases, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def main() -> None:
    for name, data in build().items():
        path = HERE / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)


if __name__ == "__main__":
    main()
