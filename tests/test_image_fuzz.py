"""Hostile bytes in → a tree or one ImageError; never another exception or an escape."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from image_helpers import E, gz, make_tar, zst

from smolpack.errors import ImageError
from smolpack.image import prepare_rootfs

VALID = make_tar(
    [
        E("d", kind="dir", mode=0o755),
        E("d/f", data=b"content" * 50),
        E("d/l", kind="sym", target="/etc"),
        E("d/h", kind="link", target="d/f"),
    ]
)


def unpack_or_image_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in.tar").write_bytes(data)
        try:
            prepare_rootfs(root / "in.tar", root / "out")
        except ImageError as err:
            assert "\n" not in str(err)
            assert not (root / "out").exists()
            return
        # Success: everything created stays under out/ (only in.tar beside it).
        assert sorted(p.name for p in root.iterdir()) == ["in.tar", "out"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
@example(b"\x28\xb5\x2f\xfd")  # a bare zstd magic
@example(b"\x1f\x8b")  # a bare gzip magic
@example(b"\0" * 1024)  # an empty tar
def test_arbitrary_bytes(data: bytes) -> None:
    unpack_or_image_error(data)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from([VALID, gz(VALID), zst(VALID)]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 12_000),
)
def test_damaged_archives(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base[: max(cut, 1)])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    unpack_or_image_error(bytes(data))
