"""Frames and message bodies of formats/agent-protocol.md: golden bytes, resync, round trips."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from smolpack.agent import protocol as p
from smolpack.errors import AgentError, UsageError

NONCE = bytes(range(16))
# Enough trailing bytes to complete any false header's claimed body (max 1 MiB + header):
# models "the stream keeps flowing", which the resync rule relies on (spec section 3, step 4).
PADDING = bytes(p.MAX_BODY + p.HEADER_LEN)


def feed_all(data: bytes, chunk: int | None = None) -> list[p.Frame]:
    reader = p.FrameReader()
    if chunk is None:
        return reader.feed(data)
    frames: list[p.Frame] = []
    for i in range(0, len(data), chunk):
        frames += reader.feed(data[i : i + chunk])
    return frames


# -- golden encodings (spec sections 2 and 5) --------------------------------------


def test_hello_golden_bytes() -> None:
    frame = p.Hello(nonce=NONCE, protocol_version=1).encode()
    body = NONCE + b"\x01\x00\x00\x00"
    head = b"SP\x01\x00\x14\x00\x00\x00"
    assert frame == head + struct.pack("<I", zlib.crc32(head + body)) + body
    assert frame.hex() == "5350010014000000" + "720d2ac4" + NONCE.hex() + "01000000"
    # Version 2 is what a host offers first (5.1).
    assert p.Hello(nonce=NONCE).encode().hex() == (
        "5350010014000000" + "9ca29fd6" + NONCE.hex() + "02000000"
    )


def test_channel_golden_frames() -> None:
    assert p.encode_chan_open(1, 8080).hex() == "5350070008000000b80ae28601000000901f0000"
    assert p.encode_chan(p.CHAN_DATA | p.TO_HOST, 0x80000001, b"hi").hex() == (
        "5350880006000000df39ad5b010000806869"
    )
    assert p.encode_chan(p.CHAN_CLOSE, 3).hex() == "53500900040000006919642203000000"
    assert p.encode_chan_credit(2, 65536, to_host=True).hex() == (
        "53508a00080000004aa6c58f0200000000000100"
    )
    assert p.decode_chan(p.CHAN_CREDIT | p.TO_HOST, bytes.fromhex("0200000000000100")) == (
        2,
        65536,
    )
    with pytest.raises(AgentError, match=r"^malformed CHAN_CLOSE frame: 1 extra bytes$"):
        p.decode_chan(p.CHAN_CLOSE, b"\1\0\0\0\0")


def test_other_golden_frames() -> None:
    assert p.encode_frame(p.STDIN).hex() == "535003000000000055b0ca1b"
    assert p.Exit(signaled=True, value=15).encode().hex() == (
        "5350840008000000" + "3ed5a98b" + "01000000" + "0f000000"
    )
    assert p.encode_signal(2).hex() == "5350040004000000bcf5266f02000000"
    assert p.encode_resize(24, 80).hex() == "53500500040000002d74fb0518005000"


def test_run_body_layout() -> None:
    req = p.RunRequest(
        argv=("ls", "-l"),
        env=("A=1",),
        cwd="/tmp",
        tty=True,
        power_off=True,
        tty_rows=24,
        tty_cols=80,
        realtime_ns=0x0102030405060708,
        entropy=b"\xee" * 64,
    )
    body = req.encode()[p.HEADER_LEN :]
    assert body[:16] == bytes.fromhex("03000000" + "1800" + "5000" + "0807060504030201")
    assert body[16:80] == b"\xee" * 64
    assert body[80:] == (
        b"\x02\x00\x00\x00" + b"\x02\x00\x00\x00ls" + b"\x02\x00\x00\x00-l"
        b"\x01\x00\x00\x00" + b"\x03\x00\x00\x00A=1" + b"\x04\x00\x00\x00/tmp"
    )
    assert p.RunRequest.decode(body) == req


# -- the reader (spec section 3) ----------------------------------------------------


def test_every_split_point_gives_the_same_frames() -> None:
    stream = p.Hello(nonce=NONCE).encode() + p.encode_frame(p.STDOUT, b"abc") + p.encode_signal(9)
    whole = feed_all(stream)
    assert [f.type for f in whole] == [p.HELLO, p.STDOUT, p.SIGNAL]
    for chunk in range(1, len(stream) + 1):
        assert feed_all(stream, chunk) == whole


def test_bad_crc_is_skipped_and_next_frame_recovered() -> None:
    bad = bytearray(p.encode_frame(p.STDOUT, b"hello"))
    bad[-1] ^= 0x01
    good = p.encode_frame(p.STDERR, b"world")
    reader = p.FrameReader()
    assert reader.feed(bytes(bad) + good) == [p.Frame(p.STDERR, b"world")]
    assert reader.skipped_bytes == len(bad)


def test_oversize_and_reserved_flags_are_rejected() -> None:
    oversize = b"SP\x03\x00" + struct.pack("<I", p.DATA_CHUNK + 1) + b"\0" * 4
    flagged = bytearray(p.encode_frame(p.READY))
    flagged[3] = 1
    unknown = b"SP\x7f\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    good = p.encode_frame(p.READY)
    assert feed_all(oversize + bytes(flagged) + unknown + good) == [p.Frame(p.READY, b"")]


def test_encode_frame_refuses_oversize_body() -> None:
    with pytest.raises(ValueError, match="65537 bytes > 65536"):
        p.encode_frame(p.STDOUT, bytes(p.DATA_CHUNK + 1))


@settings(max_examples=200)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
@example(b"SP\x02\x00\x00\x00\x10\x00" + b"S" * 9, 3)  # false RUN header claiming 1 MiB
def test_arbitrary_bytes_never_raise(data: bytes, chunk: int) -> None:
    for frame in feed_all(data, chunk):
        # Anything delivered must be a genuine frame: re-encoding gives bytes of the input.
        assert p.encode_frame(frame.type, frame.body) in data


_frame_strategy = st.one_of(
    st.binary(max_size=300).map(lambda b: p.encode_frame(p.STDOUT, b)),
    st.binary(max_size=300).map(lambda b: p.encode_frame(p.STDIN, b)),
    st.binary(min_size=16, max_size=16).map(lambda n: p.Hello(nonce=n).encode()),
    st.integers(0, 64).map(p.encode_signal),
    st.just(p.encode_frame(p.READY)),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=40), _frame_strategy), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=4096),
)
@example([(b"SP\x82\x00\x00\x01\x00\x00", p.encode_frame(p.READY))], 7)
def test_garbage_between_frames_is_skipped(pieces: list[tuple[bytes, bytes]], chunk: int) -> None:
    stream = b"".join(garbage + frame for garbage, frame in pieces)
    expected = feed_all(b"".join(frame for _, frame in pieces))
    reader = p.FrameReader()
    got: list[p.Frame] = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i : i + chunk])
    assert got + reader.feed(PADDING) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(_frame_strategy, min_size=2, max_size=8),
    st.integers(min_value=0, max_value=1 << 16),
    st.integers(min_value=1, max_value=64),
)
# Found by hypothesis: the lost byte equals the padding byte that replaces it.
@example([p.encode_signal(0), p.encode_signal(0)], 28, 1)
def test_lost_bytes_lose_only_the_damaged_frames(
    frames: list[bytes], start: int, length: int
) -> None:
    stream = b"".join(frames)
    start %= len(stream)
    stop = min(len(stream), start + length)
    reader = p.FrameReader()
    got: list[p.Frame] = []
    damaged = stream[:start] + stream[stop:]
    for i in range(0, len(damaged), 512):
        got += reader.feed(damaged[i : i + 512])
    got += reader.feed(PADDING)
    offsets = [sum(map(len, frames[:i])) for i in range(len(frames) + 1)]
    untouched = [
        feed_all(f)[0]
        for i, f in enumerate(frames)
        if offsets[i + 1] <= start or offsets[i] >= stop
    ]
    # Every frame the loss did not touch is delivered, in order. A damaged frame may come
    # back only as an exact copy of an original (its lost bytes equal the padding's zeros).
    remaining = iter(got)
    assert all(any(g == u for g in remaining) for u in untouched)
    originals = feed_all(stream)
    assert all(f in originals for f in got)


# -- bodies ----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"))


@given(
    argv=st.lists(_text, min_size=1, max_size=5),
    env=st.lists(st.tuples(_text.filter(lambda s: "=" not in s), _text), max_size=5),
    cwd=_text,
    tty=st.booleans(),
    power_off=st.booleans(),
    rows=st.integers(0, 0xFFFF),
    cols=st.integers(0, 0xFFFF),
    realtime_ns=st.integers(0, 2**64 - 1),
    entropy=st.binary(min_size=64, max_size=64),
)
def test_run_request_round_trip(
    argv: list[str],
    env: list[tuple[str, str]],
    cwd: str,
    tty: bool,
    power_off: bool,
    rows: int,
    cols: int,
    realtime_ns: int,
    entropy: bytes,
) -> None:
    req = p.RunRequest(
        argv=tuple(argv),
        env=tuple(f"{k}={v}" for k, v in env),
        cwd=cwd,
        tty=tty,
        power_off=power_off,
        tty_rows=rows,
        tty_cols=cols,
        realtime_ns=realtime_ns,
        entropy=entropy,
    )
    (frame,) = feed_all(req.encode())
    assert frame.type == p.RUN
    assert p.RunRequest.decode(frame.body) == req


def test_hello_ack_and_exit_round_trip() -> None:
    ack = p.HelloAck(nonce=NONCE, protocol_version=1, agent_version="smolpack-agent 0.1.0")
    (frame,) = feed_all(ack.encode())
    assert p.HelloAck.decode(frame.body) == ack
    assert p.Exit.decode(p.Exit(signaled=False, value=42).encode()[12:]).code == 42
    assert p.Exit.decode(p.Exit(signaled=True, value=2).encode()[12:]).code == 130


def test_malformed_bodies_raise_agent_error_naming_the_frame() -> None:
    with pytest.raises(AgentError, match=r"^malformed EXIT frame: truncated at byte 4$"):
        p.Exit.decode(b"\0\0\0\0")
    with pytest.raises(AgentError, match=r"^malformed EXIT frame: how = 7$"):
        p.Exit.decode(struct.pack("<II", 7, 0))
    # A status above 255 would become exit(256) == 0 on the host: a false success.
    for how, value, text in [(0, 256, "exit status 256"), (1, 0, "signal 0"), (1, 65, "signal 65")]:
        with pytest.raises(AgentError, match=rf"^malformed EXIT frame: {text}$"):
            p.Exit.decode(struct.pack("<II", how, value))
    with pytest.raises(AgentError, match=r"^malformed HELLO_ACK frame: 1 extra bytes$"):
        p.HelloAck.decode(NONCE + b"\1\0\0\0" + b"\0\0\0\0" + b"x")
    with pytest.raises(AgentError, match="reserved flag bits 0x00000008"):
        p.RunRequest.decode(struct.pack("<IHHQ", 8, 0, 0, 0) + bytes(64) + bytes(12))


def test_run_request_user_errors() -> None:
    with pytest.raises(UsageError, match="^argument 1 contains a NUL byte$"):
        p.RunRequest(argv=("echo", "a\0b"), env=()).encode()
    with pytest.raises(UsageError, match="^environment entry 'NOEQUALS' is malformed$"):
        p.RunRequest(argv=("env",), env=("NOEQUALS",)).encode()
    with pytest.raises(UsageError, match=r"too large \(1048680 bytes > 1 MiB RUN limit\)"):
        p.RunRequest(argv=("echo", "x" * p.MAX_BODY), env=()).encode()


def test_launcher_side_modules_import_only_the_stdlib() -> None:
    # protocol and session ride in the launcher stub: no click, zstandard or build side.
    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys; import smolpack.agent.session, smolpack.agent.protocol;"
        "print(sys.modules['smolpack'].__file__);"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'smolpack', 'click', 'zstandard', 'lief'})))"
    )
    # Not -I: `python -c` then puts the cwd (this checkout) first on sys.path, ahead of any
    # editable install of another checkout.
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    where, modules = res.stdout.splitlines()
    assert Path(where) == root / "smolpack" / "__init__.py"
    assert modules.split() == [
        "smolpack",
        "smolpack.agent",
        "smolpack.agent.protocol",
        "smolpack.agent.session",
        "smolpack.errors",
    ]
