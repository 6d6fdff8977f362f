"""Agent protocol frames and messages (run stage: launcher/build host ↔ guest agent).

Implements formats/agent-protocol.md v2: the frame (section 2), the resynchronising reader
(section 3), the type table (section 4), one dataclass per body layout (section 5) and the
channel frames (section 5.7).
Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

from smolpack.errors import AgentError, UsageError

PROTOCOL_VERSION = 2  # the newest version this host speaks; HELLO offers it first
OLDEST_VERSION = 1  # agents in packs built before channels (5.1: the host falls back)
MAGIC = b"SP"
HEADER = struct.Struct("<2sBBII")  # magic, type, flags, body_len, crc32
HEADER_LEN = HEADER.size  # 12
MAX_BODY = 1 << 20  # no frame body exceeds 1 MiB
DATA_CHUNK = 64 * 1024  # writers put at most this much data in one STDIN/STDOUT/STDERR frame
CHAN_WINDOW = 1024 * 1024  # uncredited bytes a side may send on one channel (5.7)

# Message types (section 4). Agent-to-host types have bit 7 set.
HELLO = 0x01
RUN = 0x02
STDIN = 0x03
SIGNAL = 0x04
RESIZE = 0x05
PREPARE_SNAPSHOT = 0x06
CHAN_OPEN = 0x07  # h→a form; the a→h form of each CHAN_* type is `| TO_HOST`
CHAN_DATA = 0x08
CHAN_CLOSE = 0x09
CHAN_CREDIT = 0x0A
MOUNT = 0x0B  # h→a only: a host directory as FUSE, served on a channel (5.8)
TO_HOST = 0x80
HELLO_ACK = 0x81
STDOUT = 0x82
STDERR = 0x83
EXIT = 0x84
ERROR = 0x85
READY = 0x86

# Per-type body maximum; a header outside it is treated as damage (section 3, step 3).
MAX_BODY_BY_TYPE: dict[int, int] = {
    HELLO: 20,
    RUN: MAX_BODY,
    STDIN: DATA_CHUNK,
    SIGNAL: 4,
    RESIZE: 4,
    PREPARE_SNAPSHOT: 0,
    HELLO_ACK: 1024,
    STDOUT: DATA_CHUNK,
    STDERR: DATA_CHUNK,
    EXIT: 8,
    ERROR: 4096,
    READY: 0,
}
for _t, _max in ((CHAN_OPEN, 8), (CHAN_DATA, DATA_CHUNK + 4), (CHAN_CLOSE, 4), (CHAN_CREDIT, 8)):
    MAX_BODY_BY_TYPE[_t] = MAX_BODY_BY_TYPE[_t | TO_HOST] = _max
MAX_BODY_BY_TYPE[MOUNT] = 12 + 4096
MOUNT_READ_ONLY = 1 << 0
SERVICE_SSH_AGENT = 1  # CHAN_OPEN a→h: a guest program connected to the ssh-agent socket
GUEST_SSH_AUTH_SOCK = "/run/smolpack/ssh-agent.sock"  # where the agent listens (5.7)

RUN_FLAG_TTY = 1 << 0
RUN_FLAG_POWER_OFF = 1 << 1
RUN_FLAG_SSH_AGENT = 1 << 2  # version 2
_RUN_FLAGS = RUN_FLAG_TTY | RUN_FLAG_POWER_OFF | RUN_FLAG_SSH_AGENT
_RUN_FIXED = struct.Struct("<IHHQ64s")  # flags, tty_rows, tty_cols, realtime_ns, entropy


@dataclass(frozen=True, slots=True)
class Frame:
    """One valid frame: its type and body."""

    type: int  # message type (section 4)
    body: bytes  # the body, already crc-checked


def encode_frame(msg_type: int, body: bytes = b"") -> bytes:
    """Header + body; the crc covers header bytes 0..7 then the body (section 2)."""
    limit = MAX_BODY_BY_TYPE.get(msg_type)
    if limit is None:
        raise ValueError(f"unknown frame type 0x{msg_type:02x}")
    if len(body) > limit:
        raise ValueError(f"frame type 0x{msg_type:02x} body of {len(body)} bytes > {limit}")
    head = struct.pack("<2sBBI", MAGIC, msg_type, 0, len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


class FrameReader:
    """Incremental frame parser that skips damaged bytes instead of failing (section 3)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped_bytes = 0  # bytes dropped while resynchronising (for diagnostics)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame completed by them, in order."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing "S": it may be the first half of the next magic.
                keep = 1 if buf[-1:] == MAGIC[:1] else 0
                self.skipped_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.skipped_bytes += start - pos
            pos = start
            if len(buf) - pos < HEADER_LEN:
                break
            _, msg_type, flags, body_len, crc = HEADER.unpack_from(buf, pos)
            limit = MAX_BODY_BY_TYPE.get(msg_type, -1)
            if flags != 0 or body_len > limit:
                pos += 1
                self.skipped_bytes += 1
                continue
            end = pos + HEADER_LEN + body_len
            if len(buf) < end:
                break
            body = bytes(buf[pos + HEADER_LEN : end])
            if zlib.crc32(body, zlib.crc32(buf[pos : pos + 8])) != crc:
                pos += 1
                self.skipped_bytes += 1
                continue
            frames.append(Frame(msg_type, body))
            pos = end
        del buf[:pos]
        return frames


# -- bodies (section 5) ---------------------------------------------------------


def _pack_str(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


class _BodyReader:
    """Bounds-checked cursor over a body; every failure names the message."""

    def __init__(self, what: str, body: bytes) -> None:
        self.what = what
        self.body = body
        self.off = 0

    def take(self, n: int) -> bytes:
        if n > len(self.body) - self.off:
            raise AgentError(f"malformed {self.what} frame: truncated at byte {self.off}")
        self.off += n
        return self.body[self.off - n : self.off]

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.u32())

    def end(self) -> None:
        if self.off != len(self.body):
            extra = len(self.body) - self.off
            raise AgentError(f"malformed {self.what} frame: {extra} extra bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """HELLO (h→a): the host repeats it until the agent acks this nonce (5.1)."""

    TYPE: ClassVar[int] = HELLO
    nonce: bytes  # 16 fresh random bytes per handshake
    protocol_version: int = PROTOCOL_VERSION  # the version the host speaks

    def encode(self) -> bytes:
        return encode_frame(HELLO, self.nonce + struct.pack("<I", self.protocol_version))

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        r = _BodyReader("HELLO", body)
        nonce = r.take(16)
        version = r.u32()
        r.end()
        return cls(nonce=nonce, protocol_version=version)


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloAck:
    """HELLO_ACK (a→h): echoes the nonce, names the agent (5.1)."""

    TYPE: ClassVar[int] = HELLO_ACK
    nonce: bytes  # the nonce of the HELLO answered
    protocol_version: int  # the version the agent speaks
    agent_version: str  # e.g. "smolpack-agent 0.1.0"

    def encode(self) -> bytes:
        body = self.nonce + struct.pack("<I", self.protocol_version)
        return encode_frame(HELLO_ACK, body + _pack_str(self.agent_version.encode()))

    @classmethod
    def decode(cls, body: bytes) -> HelloAck:
        r = _BodyReader("HELLO_ACK", body)
        nonce = r.take(16)
        version = r.u32()
        agent = r.string().decode("utf-8", "replace")
        r.end()
        return cls(nonce=nonce, protocol_version=version, agent_version=agent)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequest:
    """RUN (h→a): what to run and how (5.3)."""

    TYPE: ClassVar[int] = RUN
    argv: tuple[str, ...]  # program and arguments; argv[0] is looked up in env's PATH
    env: tuple[str, ...]  # the complete environment, each "KEY=VALUE"
    cwd: str = ""  # working directory; "" means "/"
    tty: bool = False  # run on a pty (stdout only, no separate stderr)
    power_off: bool = False  # power the VM off after EXIT (the launcher's run)
    tty_rows: int = 0  # window rows in tty mode; 0 = leave the default
    tty_cols: int = 0  # window columns in tty mode; 0 = leave the default
    realtime_ns: int = 0  # host wall clock, ns since the epoch; 0 = do not set
    entropy: bytes = bytes(64)  # 64 fresh random bytes for the guest RNG
    ssh_agent: bool = False  # serve GUEST_SSH_AUTH_SOCK for this run (v2, section 5.7)

    def encode(self) -> bytes:
        if not self.argv:
            raise UsageError("nothing to run: the command line is empty")
        for i, arg in enumerate(self.argv):
            if "\0" in arg:
                raise UsageError(f"argument {i} contains a NUL byte")
        for entry in self.env:
            if "=" not in entry or "\0" in entry:
                raise UsageError(f"environment entry {entry.split('=')[0]!r} is malformed")
        if len(self.entropy) != 64:
            raise ValueError("entropy must be 64 bytes")
        flags = (
            (RUN_FLAG_TTY if self.tty else 0)
            | (RUN_FLAG_POWER_OFF if self.power_off else 0)
            | (RUN_FLAG_SSH_AGENT if self.ssh_agent else 0)
        )
        parts = [
            _RUN_FIXED.pack(flags, self.tty_rows, self.tty_cols, self.realtime_ns, self.entropy)
        ]
        for seq in (self.argv, self.env):
            parts.append(struct.pack("<I", len(seq)))
            parts.extend(_pack_str(s.encode("utf-8", "surrogateescape")) for s in seq)
        parts.append(_pack_str(self.cwd.encode("utf-8", "surrogateescape")))
        body = b"".join(parts)
        if len(body) > MAX_BODY:
            raise UsageError(
                f"command line and environment too large ({len(body)} bytes > 1 MiB RUN limit)"
            )
        return encode_frame(RUN, body)

    @classmethod
    def decode(cls, body: bytes) -> RunRequest:
        r = _BodyReader("RUN", body)
        flags, rows, cols, realtime_ns, entropy = _RUN_FIXED.unpack(r.take(_RUN_FIXED.size))
        if flags & ~_RUN_FLAGS:
            raise AgentError(f"malformed RUN frame: reserved flag bits 0x{flags:08x}")
        lists: list[tuple[str, ...]] = []
        for _ in range(2):
            count = r.u32()
            lists.append(tuple(r.string().decode("utf-8", "surrogateescape") for _ in range(count)))
        cwd = r.string().decode("utf-8", "surrogateescape")
        r.end()
        return cls(
            argv=lists[0],
            env=lists[1],
            cwd=cwd,
            tty=bool(flags & RUN_FLAG_TTY),
            power_off=bool(flags & RUN_FLAG_POWER_OFF),
            tty_rows=rows,
            tty_cols=cols,
            realtime_ns=realtime_ns,
            entropy=entropy,
            ssh_agent=bool(flags & RUN_FLAG_SSH_AGENT),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """EXIT (a→h): how the program ended (5.5)."""

    TYPE: ClassVar[int] = EXIT
    signaled: bool  # killed by a signal (how = 1) rather than exited (how = 0)
    value: int  # exit status 0..255, or the signal number

    @property
    def code(self) -> int:
        """The exit code a shell would report: status, or 128 + signal."""
        return 128 + self.value if self.signaled else self.value

    def encode(self) -> bytes:
        return encode_frame(EXIT, struct.pack("<II", int(self.signaled), self.value))

    @classmethod
    def decode(cls, body: bytes) -> Exit:
        r = _BodyReader("EXIT", body)
        how, value = r.u32(), r.u32()
        r.end()
        if how > 1:
            raise AgentError(f"malformed EXIT frame: how = {how}")
        # A wait status holds 8 bits and Linux signals are 1..64: anything else would reach
        # the launcher's exit() and be cut to its low 8 bits (256 -> 0, a false success).
        if (how == 0 and value > 255) or (how == 1 and not 1 <= value <= 64):
            kind = "signal" if how else "exit status"
            raise AgentError(f"malformed EXIT frame: {kind} {value}")
        return cls(signaled=how == 1, value=value)


def encode_signal(signo: int) -> bytes:
    """SIGNAL (h→a): a Linux signal number for the program's process group (5.4)."""
    return encode_frame(SIGNAL, struct.pack("<I", signo))


def encode_resize(rows: int, cols: int) -> bytes:
    """RESIZE (h→a): the new window size, applied with TIOCSWINSZ (5.4)."""
    return encode_frame(RESIZE, struct.pack("<HH", rows, cols))


def encode_error(message: str) -> bytes:
    """ERROR (a→h): one line about a protocol problem (5.6)."""
    return encode_frame(ERROR, _pack_str(message.encode()[: MAX_BODY_BY_TYPE[ERROR] - 4]))


def decode_error(body: bytes) -> str:
    r = _BodyReader("ERROR", body)
    message = r.string().decode("utf-8", "replace")
    r.end()
    return message


def decode_signal(body: bytes) -> int:
    r = _BodyReader("SIGNAL", body)
    signo = r.u32()
    r.end()
    return signo


def decode_resize(body: bytes) -> tuple[int, int]:
    if len(body) != 4:
        raise AgentError(f"malformed RESIZE frame: {len(body)} bytes, expected 4")
    rows, cols = struct.unpack("<HH", body)
    return rows, cols


# -- channels (section 5.7) ---------------------------------------------------------


def encode_chan(msg_type: int, chan: int, rest: bytes = b"") -> bytes:
    """A CHAN_* frame (either direction): `u32 chan` then the type's fields or data."""
    return encode_frame(msg_type, struct.pack("<I", chan) + rest)


def encode_chan_open(chan: int, value: int, *, to_host: bool = False) -> bytes:
    """CHAN_OPEN: h→a `value` is a guest TCP port, a→h a service number."""
    return encode_chan(CHAN_OPEN | (TO_HOST if to_host else 0), chan, struct.pack("<I", value))


def encode_chan_credit(chan: int, count: int, *, to_host: bool = False) -> bytes:
    return encode_chan(CHAN_CREDIT | (TO_HOST if to_host else 0), chan, struct.pack("<I", count))


def decode_chan(msg_type: int, body: bytes) -> tuple[int, int | bytes]:
    """(chan, value) for OPEN/CREDIT, (chan, data) for DATA, (chan, b"") for CLOSE."""
    kind = msg_type & ~TO_HOST
    name = {CHAN_OPEN: "CHAN_OPEN", CHAN_DATA: "CHAN_DATA", CHAN_CLOSE: "CHAN_CLOSE"}.get(
        kind, "CHAN_CREDIT"
    )
    r = _BodyReader(name, body)
    chan = r.u32()
    if kind == CHAN_DATA:
        return chan, body[4:]
    if kind == CHAN_CLOSE:
        r.end()
        return chan, b""
    value = r.u32()
    r.end()
    return chan, value


def encode_mount(chan: int, guest_path: str, *, read_only: bool) -> bytes:
    """MOUNT (h→a): mount FUSE at guest_path; its requests travel on channel `chan` (5.8)."""
    path = guest_path.encode("utf-8", "surrogateescape")
    flags = MOUNT_READ_ONLY if read_only else 0
    return encode_frame(MOUNT, struct.pack("<III", chan, flags, len(path)) + path)
