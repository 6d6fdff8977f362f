"""Host side of the agent protocol (run stage: launcher and build VM ↔ guest agent).

Implements the host's part of formats/agent-protocol.md v2: the handshake with version choice
(sections 5.1, 6), a RUN with stdio pumping until EXIT (sections 5.2–5.5), forwarding signals
and window sizes (section 5.4), channels beside the run (section 5.7, `channels.ChannelHub`),
and PREPARE_SNAPSHOT (section 5.6). Stdlib only: the launcher imports it.

One `AgentSession` wraps one connected channel (a socket or a raw fd) and keeps the frame
reader's state between calls, so a frame split across two calls is never lost.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import time
from types import TracebackType
from typing import TYPE_CHECKING

from smolpack.agent import protocol as p
from smolpack.errors import AgentChannelClosed, AgentError, AgentTimeout, VmUnresponsive

if TYPE_CHECKING:
    from smolpack.agent.channels import ChannelHub

HANDSHAKE_INTERVAL_S = 0.05  # HELLO resend period; restore-to-live is ~0.3 s under QEMU TCG
# Liveness during a run: the agent answers a HELLO in any state, whatever the program does,
# so a HELLO is our ping. After this long without a frame from the agent we ping; a ping
# unanswered for UNRESPONSIVE_S ends the run (a hung guest must not hold the user forever).
IDLE_PING_S = 15.0
UNRESPONSIVE_S = 30.0
SIGNAL_ANSWER_S = 10.0  # after a forwarded signal the user wants an end: ping at once
_SEND_HIGH = 256 * 1024  # stop reading our stdin while this much waits to be sent
_READ_CHUNK = 64 * 1024


def _write_all(fd: int, data: bytes) -> None:
    """Unbuffered write of all bytes, waiting if fd happens to be non-blocking."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            sel = selectors.PollSelector()
            sel.register(fd, selectors.EVENT_WRITE)
            sel.select()
            sel.close()


class AgentSession:
    """One conversation with a guest agent over a connected channel."""

    def __init__(self, channel: socket.socket | int) -> None:
        self._fd = channel if isinstance(channel, int) else channel.fileno()
        os.set_blocking(self._fd, False)
        self._reader = p.FrameReader()
        self._pending: collections.deque[p.Frame] = collections.deque()
        self._out = bytearray()
        # Frames queued from signal handlers; the wake pipe interrupts the run loop's select.
        self._control: collections.deque[bytes] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.agent_version: str | None = None  # from the last HELLO_ACK
        self._signalled: str | None = None  # name of the last forwarded signal, for pings
        self.protocol_version = p.PROTOCOL_VERSION  # agreed in the last handshake (5.1)

    def close(self) -> None:
        """Release the wake pipe; the channel itself belongs to the caller."""
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- channel plumbing ---------------------------------------------------------

    def _flush(self) -> None:
        while self._out:
            try:
                sent = os.write(self._fd, self._out)
            except BlockingIOError:
                return
            except OSError as err:
                raise AgentChannelClosed(f"guest agent channel failed: {err.strerror}") from None
            del self._out[:sent]

    def _read_channel(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            raise AgentChannelClosed(f"guest agent channel failed: {err.strerror}") from None
        if not data:
            raise AgentChannelClosed("guest agent closed the channel")
        self._pending.extend(self._reader.feed(data))

    def _pump(self, timeout_s: float) -> None:
        """Send what is queued and read what arrives, waiting at most timeout_s."""
        self._flush()
        sel = selectors.PollSelector()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        sel.register(self._fd, events)
        try:
            for _, mask in sel.select(max(timeout_s, 0.0)):
                if mask & selectors.EVENT_WRITE:
                    self._flush()
                if mask & selectors.EVENT_READ:
                    self._read_channel()
        finally:
            sel.close()

    def _take_control(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while self._control:
            self._out += self._control.popleft()

    # -- signal-handler safe requests -----------------------------------------------

    def forward_signal(self, signo: int) -> None:
        """Queue SIGNAL for the running program's group; safe to call from a signal handler."""
        self._control.append(p.encode_signal(int(signo)))
        self._signalled = signal.Signals(signo).name
        self._wake()

    def resize(self, rows: int, cols: int) -> None:
        """Queue RESIZE (tty mode); safe to call from a SIGWINCH handler."""
        self._control.append(p.encode_resize(rows, cols))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop wakes anyway

    # -- protocol steps ---------------------------------------------------------------

    def handshake(
        self, timeout_s: float = 10.0, *, interval_s: float = HANDSHAKE_INTERVAL_S
    ) -> p.HelloAck:
        """Send HELLO with a fresh nonce until the agent acks that nonce (section 6).

        Offers the newest version first; an agent that answers `unsupported protocol
        version N` for the offered N gets the next older one (section 5.1).
        """
        nonce = os.urandom(16)
        offer = p.PROTOCOL_VERSION
        hello = p.Hello(nonce=nonce, protocol_version=offer).encode()
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise AgentTimeout(
                    f"guest agent did not answer the handshake within {timeout_s:g} s"
                )
            if now >= next_send:
                if not self._out:  # one HELLO in flight at most: the peer may not be reading
                    self._out += hello
                next_send = now + interval_s
            self._pump(min(next_send, deadline) - now)
            while self._pending:
                frame = self._pending.popleft()
                if frame.type == p.ERROR:
                    message = p.decode_error(frame.body)
                    if message.startswith("unsupported protocol version"):
                        if message == f"unsupported protocol version {offer}" and offer > 1:
                            offer -= 1
                            hello = p.Hello(nonce=nonce, protocol_version=offer).encode()
                            next_send = 0.0
                        continue  # or an answer to an offer already withdrawn
                    raise AgentError(f"guest agent: {message}")
                if frame.type != p.HELLO_ACK:
                    continue  # late output of an earlier run, stale ACKs...
                ack = p.HelloAck.decode(frame.body)
                if ack.nonce != nonce:
                    continue
                if ack.protocol_version != offer:
                    raise AgentError(
                        f"guest agent speaks protocol {ack.protocol_version},"
                        f" this host offered {offer}"
                    )
                self.agent_version = ack.agent_version
                self.protocol_version = offer
                self._pending.clear()
                return ack

    def run(
        self,
        request: p.RunRequest,
        *,
        stdin_fd: int | None,
        stdout_fd: int,
        stderr_fd: int,
        channels: ChannelHub | None = None,
    ) -> int:
        """Run `request` in the guest, pumping stdio; return its exit code (128+N if signaled).

        stdin_fd None means empty stdin. Output is written unbuffered with os.write. If
        stdout_fd's reader goes away (EPIPE), further stdout is dropped and the guest
        program gets SIGPIPE, as it would locally. `channels` (forwarded ports, ssh-agent)
        are served beside the run and wound down when it ends.
        """
        self._pending.clear()
        if channels is not None:
            channels.attach(self._out)
        try:
            return self._run(request, stdin_fd, stdout_fd, stderr_fd, channels)
        finally:
            if channels is not None:
                channels.finish()

    def _run(
        self,
        request: p.RunRequest,
        stdin_fd: int | None,
        stdout_fd: int,
        stderr_fd: int,
        channels: ChannelHub | None,
    ) -> int:
        self._out += request.encode()
        stdin_open = stdin_fd is not None
        if not stdin_open:
            self._out += p.encode_frame(p.STDIN)
        stdout_broken = False
        live = _Liveness(self.protocol_version)
        sel = selectors.PollSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        sel.register(self._fd, selectors.EVENT_READ)
        if stdin_fd is not None:
            sel.register(stdin_fd, selectors.EVENT_READ)
        chan_fds: dict[int, int] = {}  # fd -> events registered for channels
        try:
            while True:
                self._take_control()
                self._flush()
                sel.modify(
                    self._fd,
                    selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0),
                )
                if channels is not None:
                    _sync_interest(sel, chan_fds, channels.interest(len(self._out) < _SEND_HIGH))
                if stdin_fd is not None and stdin_open:
                    wanted = len(self._out) < _SEND_HIGH
                    registered = stdin_fd in sel.get_map()
                    if wanted and not registered:
                        sel.register(stdin_fd, selectors.EVENT_READ)
                    elif registered and not wanted:
                        sel.unregister(stdin_fd)
                if self._signalled is not None:
                    live.signalled(self._signalled)
                    self._signalled = None
                ping = live.due()
                if ping is not None:
                    self._out += ping
                    continue
                for key, mask in sel.select(live.wait()):
                    if key.fd == self._wake_r:
                        continue  # _take_control at the loop top
                    if key.fd == stdin_fd:
                        stdin_open = self._forward_stdin(stdin_fd)
                        if not stdin_open:
                            sel.unregister(stdin_fd)
                    elif key.fd == self._fd:
                        if mask & selectors.EVENT_WRITE:
                            self._flush()
                        if mask & selectors.EVENT_READ:
                            self._read_channel()
                    elif channels is not None:
                        channels.on_ready(key.fd, mask)
                if self._pending:
                    live.heard(self._pending)
                while self._pending:
                    frame = self._pending.popleft()
                    if frame.type & p.TO_HOST and p.CHAN_OPEN <= frame.type & ~p.TO_HOST <= 0x0A:
                        if channels is not None:
                            channels.on_frame(frame)
                    elif frame.type == p.STDOUT and frame.body and not stdout_broken:
                        try:
                            _write_all(stdout_fd, frame.body)
                        except BrokenPipeError:
                            stdout_broken = True
                            self.forward_signal(signal.SIGPIPE)
                    elif frame.type == p.STDERR and frame.body:
                        try:
                            _write_all(stderr_fd, frame.body)
                        except BrokenPipeError:
                            pass  # nowhere left to report anything
                    elif frame.type == p.EXIT:
                        return p.Exit.decode(frame.body).code
                    elif frame.type == p.ERROR:
                        raise AgentError(f"guest agent: {p.decode_error(frame.body)}")
        finally:
            sel.close()

    def _forward_stdin(self, stdin_fd: int) -> bool:
        """Read one chunk of our stdin into a STDIN frame; False once EOF was sent."""
        try:
            data = os.read(stdin_fd, p.DATA_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""  # EIO from a hung-up terminal: treat as end of input
        self._out += p.encode_frame(p.STDIN, data)
        return bool(data)

    def run_build_step(
        self,
        argv: list[str] | tuple[str, ...],
        *,
        env: list[str] | tuple[str, ...],
        cwd: str = "",
        stdout_fd: int,
        stderr_fd: int,
        channels: ChannelHub | None = None,
    ) -> int:
        """Run one build step (empty stdin, no tty, no power off); return its exit code."""
        request = p.RunRequest(
            argv=tuple(argv),
            env=tuple(env),
            cwd=cwd,
            realtime_ns=time.time_ns(),
            entropy=os.urandom(64),
        )
        return self.run(
            request, stdin_fd=None, stdout_fd=stdout_fd, stderr_fd=stderr_fd, channels=channels
        )

    def prepare_snapshot(self, timeout_s: float = 30.0) -> None:
        """Ask the agent to sync and go back to waiting for HELLO; return at READY.

        The caller then pauses and saves the VM; after a restore, call `handshake` again
        (it uses a new nonce).
        """
        self._pending.clear()
        self._out += p.encode_frame(p.PREPARE_SNAPSHOT)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"guest agent did not get ready for a snapshot in {timeout_s:g} s")
            self._pump(left)
            while self._pending:
                frame = self._pending.popleft()
                if frame.type == p.READY:
                    return
                if frame.type == p.ERROR:
                    raise AgentError(f"guest agent: {p.decode_error(frame.body)}")


def _sync_interest(
    sel: selectors.BaseSelector, current: dict[int, int], wanted: dict[int, int]
) -> None:
    """Make the selector watch exactly `wanted` among the channel fds (`current` tracks them)."""
    for fd in [fd for fd in current if wanted.get(fd, 0) == 0]:
        sel.unregister(fd)
        del current[fd]
    for fd, events in wanted.items():
        if not events or current.get(fd) == events:
            continue
        if fd in current:
            sel.modify(fd, events)
        else:
            sel.register(fd, events)
        current[fd] = events


def handshake(channel: socket.socket | int, timeout_s: float = 10.0) -> AgentSession:
    """Open a session on a connected channel and handshake; the caller closes the session."""
    session = AgentSession(channel)
    try:
        session.handshake(timeout_s)
    except BaseException:
        session.close()
        raise
    return session


class _Liveness:
    """When to ping the agent during a run, and when its silence means the VM is hung."""

    def __init__(self, protocol_version: int) -> None:
        self._version = protocol_version  # the handshake's: an older agent refuses others
        self._heard = time.monotonic()
        self._nonce: bytes | None = None  # of the unanswered ping
        self._deadline = 0.0  # for its answer
        self._why = ""
        self._ping_now = False

    def signalled(self, name: str) -> None:
        self._ping_now, self._why = True, f"within {SIGNAL_ANSWER_S:g} s of {name}"

    def heard(self, frames: collections.deque[p.Frame]) -> None:
        self._heard = time.monotonic()
        for frame in frames:
            if frame.type == p.HELLO_ACK and self._nonce is not None:
                if p.HelloAck.decode(frame.body).nonce == self._nonce:
                    self._nonce = None

    def due(self) -> bytes | None:
        """A HELLO to send now, or None; raises VmUnresponsive once a ping went unanswered."""
        now = time.monotonic()
        if self._nonce is not None:
            if now >= self._deadline:
                raise VmUnresponsive(
                    f"the VM stopped answering (no reply from the guest agent {self._why})"
                )
            if not self._ping_now:
                return None
        if self._ping_now or now - self._heard >= IDLE_PING_S:
            wait = SIGNAL_ANSWER_S if self._ping_now else UNRESPONSIVE_S
            if not self._ping_now:
                self._why = f"for {IDLE_PING_S + UNRESPONSIVE_S:g} s"
            self._ping_now = False
            self._nonce = os.urandom(16)
            self._deadline = now + wait
            return p.Hello(nonce=self._nonce, protocol_version=self._version).encode()
        return None

    def wait(self) -> float:
        """How long the run loop may block before `due` must be asked again."""
        now = time.monotonic()
        until = self._deadline if self._nonce is not None else self._heard + IDLE_PING_S
        return max(0.0, until - now) + 0.01
