"""Host side of the agent's channels (run stage): forwarded ports and the ssh-agent.

Implements formats/agent-protocol.md section 5.7 for the host. A `ChannelHub` owns the
run's host listeners (127.0.0.1:HOST for each forwarded port) and every open channel; the
session's run loop asks it which sockets to watch (`interest`), hands it ready sockets
(`on_ready`) and CHAN_* frames (`on_frame`), and it queues its own frames on the session's
output buffer. Stdlib only: the launcher imports it.

Why this shape: one poll loop (the session's) drives stdio and every connection, so a run
with forwards costs no thread and a slow client only ever stalls its own channel (the 1 MiB
credit window of section 5.7).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smolpack.agent import protocol as p
from smolpack.errors import HostError

if TYPE_CHECKING:
    from smolpack.hostdir.server import HostDir

_CREDIT_EVERY = 64 * 1024  # send CHAN_CREDIT at least this often (5.7)
_FINISH_S = 2.0  # after EXIT: how long queued bytes may take to reach their clients
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


@dataclass(frozen=True, slots=True)
class PortForward:
    """One `HOST:GUEST` TCP forward (Smolfile `ports`, `--smol-port`)."""

    host_port: int  # listened on at 127.0.0.1
    guest_port: int  # connected to at 127.0.0.1 inside the guest


def parse_port_forward(spec: str, flag: str) -> PortForward:
    """`PORT` or `HOST:GUEST` -> PortForward; UsageError naming `flag` otherwise."""
    from smolpack.errors import UsageError

    host, _, guest = spec.partition(":")
    try:
        ports = (int(host), int(guest or host))
    except ValueError:
        raise UsageError(f"{flag} {spec!r}: expected PORT or HOST:GUEST") from None
    if not all(1 <= port <= 65535 for port in ports):
        raise UsageError(f"{flag} {spec!r}: ports must be between 1 and 65535")
    return PortForward(*ports)


@dataclass(slots=True)
class _Chan:
    id: int
    sock: socket.socket
    credit: int = p.CHAN_WINDOW  # bytes we may still send to the agent
    queue: bytearray = field(default_factory=bytearray)  # from the agent, to our socket
    written: int = 0  # bytes written to the socket and not yet credited back
    read_eof: bool = False  # our socket gave EOF; the empty CHAN_DATA is sent
    peer_eof: bool = False  # the agent sent an empty CHAN_DATA
    closing: bool = False  # the agent sent CHAN_CLOSE: write the queue, then close


@dataclass(slots=True)
class _Fuse:
    """A MOUNT's channel (5.8): the kernel's requests in, the HostDir's replies out."""

    id: int
    hostdir: HostDir
    credit: int = p.CHAN_WINDOW  # bytes of replies we may still send
    replies: bytearray = field(default_factory=bytearray)  # replies not yet sent


class ChannelHub:
    """Listeners and channels of one run (section 5.7)."""

    def __init__(
        self,
        listeners: list[tuple[socket.socket, int]],
        ssh_auth_sock: str | None,
        mounts: list[tuple[HostDir, str]] | None = None,
    ):
        self._listeners = {s.fileno(): (s, guest) for s, guest in listeners}
        self._mounts = mounts or []  # (served directory, guest path), mounted at attach
        self._fuse: dict[int, _Fuse] = {}  # by channel id
        self._ssh_auth_sock = ssh_auth_sock  # the host agent's socket; None = not forwarded
        self._chans: dict[int, _Chan] = {}  # by channel id
        self._by_fd: dict[int, _Chan] = {}
        self._next_id = 1
        self._out = bytearray()  # replaced by the session's output buffer in `attach`

    @property
    def ssh_agent(self) -> bool:
        """Whether the run serves the ssh-agent socket (RUN flag SSH_AGENT)."""
        return self._ssh_auth_sock is not None

    def attach(self, out: bytearray) -> None:
        """Queue frames on `out` (the session's output buffer) from now on; MOUNT first, so
        the directories are there before the RUN queued after them starts the program."""
        self._out = out
        for hostdir, guest_path in self._mounts:
            fuse = self._fuse[self._next_id] = _Fuse(self._next_id, hostdir)
            self._next_id += 1
            out += p.encode_mount(fuse.id, guest_path, read_only=hostdir.read_only)

    # -- the run loop's side ------------------------------------------------------------

    def interest(self, room: bool) -> dict[int, int]:
        """Which fds to watch for what; `room` False while the port's output is backed up."""
        wanted = {fd: (_R if room else 0) for fd in self._listeners}
        for chan in self._chans.values():
            events = _W if chan.queue else 0
            if room and chan.credit > 0 and not (chan.read_eof or chan.closing):
                events |= _R
            wanted[chan.sock.fileno()] = events
        return wanted

    def on_ready(self, fd: int, mask: int) -> None:
        if fd in self._listeners:
            self._accept(*self._listeners[fd])
            return
        chan = self._by_fd.get(fd)
        if chan is not None and mask & _W:
            self._write(chan)
        chan = self._by_fd.get(fd)
        if chan is not None and mask & _R:
            self._read(chan)

    def on_frame(self, frame: p.Frame) -> None:
        kind = frame.type & ~p.TO_HOST
        chan_id, value = p.decode_chan(frame.type, frame.body)
        if kind == p.CHAN_OPEN:
            self._open_service(chan_id, int(value))
            return
        if chan_id in self._fuse:
            self._serve(self._fuse[chan_id], kind, value)
            return
        chan = self._chans.get(chan_id)
        if chan is None:
            return  # a channel we already closed (5.7, reader obligation 3)
        if kind == p.CHAN_CREDIT:
            chan.credit += int(value)
        elif kind == p.CHAN_CLOSE:
            chan.closing = True
            self._write(chan)
        elif isinstance(value, bytes) and value:
            if len(chan.queue) + len(value) > p.CHAN_WINDOW:
                self._abort(chan)  # the agent ignored our window (obligation 4)
                return
            chan.queue += value
            self._write(chan)
        else:
            chan.peer_eof = True
            self._write(chan)

    def _serve(self, chan: _Fuse, kind: int, value: int | bytes) -> None:
        """A FUSE channel: answer complete requests, send replies as the window allows."""
        data = b""
        if kind == p.CHAN_CREDIT and isinstance(value, int):
            chan.credit += value
        elif kind == p.CHAN_DATA and isinstance(value, bytes):
            data = value
        elif kind == p.CHAN_CLOSE:  # unmounted
            del self._fuse[chan.id]
            return
        while True:
            # Requests are answered only while the replies fit the window: the guest's
            # readahead can ask for many 128 KiB reads with a few bytes each, and the
            # requests wait (credited only once answered) rather than their replies pile up.
            room = p.CHAN_WINDOW - len(chan.replies)
            if room > 0 or data:
                replies, done = chan.hostdir.feed(data, max_out=max(room, 0))
                data = b""
                chan.replies += replies
                if done:
                    self._out += p.encode_chan_credit(chan.id, done)
            if not (chan.replies and chan.credit > 0):
                return
            while chan.replies and chan.credit > 0:
                piece = bytes(chan.replies[: min(p.DATA_CHUNK, chan.credit)])
                del chan.replies[: len(piece)]
                chan.credit -= len(piece)
                self._out += p.encode_chan(p.CHAN_DATA, chan.id, piece)
            if chan.credit <= 0 or not chan.hostdir.pending:
                return

    def finish(self) -> None:
        """The run ended: give queued bytes a moment to reach their clients, close it all."""
        deadline = time.monotonic() + _FINISH_S
        for hostdir, _path in self._mounts:
            hostdir.close()
        self._fuse.clear()
        for chan in list(self._chans.values()):
            chan.closing = True
            with contextlib.suppress(OSError):
                chan.sock.setblocking(True)
                chan.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                chan.sock.sendall(chan.queue)
                chan.sock.shutdown(socket.SHUT_WR)
            self._forget(chan)
        for sock, _guest in self._listeners.values():
            sock.close()
        self._listeners.clear()

    # -- channel steps ------------------------------------------------------------------

    def _accept(self, listener: socket.socket, guest_port: int) -> None:
        try:
            conn, _addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        conn.setblocking(False)
        chan = self._add(self._next_id, conn)
        self._next_id += 1
        self._out += p.encode_chan_open(chan.id, guest_port)

    def _open_service(self, chan_id: int, service: int) -> None:
        if not chan_id & 0x80000000 or chan_id in self._chans:
            self._out += p.encode_chan(p.CHAN_CLOSE, chan_id)  # obligation 2
            return
        if service != p.SERVICE_SSH_AGENT or self._ssh_auth_sock is None:
            self._out += p.encode_chan(p.CHAN_CLOSE, chan_id)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self._ssh_auth_sock)
        except OSError:
            sock.close()
            self._out += p.encode_chan(p.CHAN_CLOSE, chan_id)
            return
        sock.setblocking(False)
        self._add(chan_id, sock)

    def _add(self, chan_id: int, sock: socket.socket) -> _Chan:
        chan = _Chan(chan_id, sock)
        self._chans[chan_id] = chan
        self._by_fd[sock.fileno()] = chan
        return chan

    def _read(self, chan: _Chan) -> None:
        try:
            data = chan.sock.recv(min(p.DATA_CHUNK, chan.credit))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(chan)
            return
        if data:
            chan.credit -= len(data)
            self._out += p.encode_chan(p.CHAN_DATA, chan.id, data)
            return
        chan.read_eof = True
        self._out += p.encode_chan(p.CHAN_DATA, chan.id)
        self._maybe_done(chan)

    def _write(self, chan: _Chan) -> None:
        while chan.queue:
            try:
                sent = chan.sock.send(chan.queue)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._abort(chan)
                return
            del chan.queue[:sent]
            chan.written += sent
        if chan.written and (chan.written >= _CREDIT_EVERY or not chan.queue):
            self._out += p.encode_chan_credit(chan.id, chan.written)
            chan.written = 0
        if chan.queue:
            return
        if chan.closing:
            self._forget(chan)  # the agent has closed: nothing to send back (5.7)
            return
        if chan.peer_eof:
            with contextlib.suppress(OSError):
                chan.sock.shutdown(socket.SHUT_WR)
        self._maybe_done(chan)

    def _maybe_done(self, chan: _Chan) -> None:
        if chan.read_eof and chan.peer_eof and not chan.queue and chan.id in self._chans:
            self._out += p.encode_chan(p.CHAN_CLOSE, chan.id)
            self._forget(chan)

    def _abort(self, chan: _Chan) -> None:
        self._out += p.encode_chan(p.CHAN_CLOSE, chan.id)
        self._forget(chan)

    def _forget(self, chan: _Chan) -> None:
        if self._chans.pop(chan.id, None) is None:
            return
        self._by_fd.pop(chan.sock.fileno(), None)
        chan.sock.close()


def listen_forwards(forwards: list[PortForward]) -> list[tuple[socket.socket, int]]:
    """Bind 127.0.0.1:HOST for each forward before the VM starts; HostError naming a busy port."""
    listeners: list[tuple[socket.socket, int]] = []
    try:
        for fwd in forwards:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listeners.append((sock, fwd.guest_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", fwd.host_port))
            except OSError as err:
                raise HostError(
                    f"cannot forward port {fwd.host_port} to the guest's {fwd.guest_port}:"
                    f" 127.0.0.1:{fwd.host_port}: {err.strerror or err}"
                ) from None
            sock.listen(64)
            sock.setblocking(False)
    except BaseException:
        for sock, _guest in listeners:
            sock.close()
        raise
    return listeners


def host_ssh_auth_sock(flag: str) -> str:
    """The host's ssh-agent socket, checked to exist; HostError naming `flag` otherwise."""
    path = os.environ.get("SSH_AUTH_SOCK", "")
    if not path:
        raise HostError(f"{flag}: SSH_AUTH_SOCK is not set, so there is no ssh-agent to forward")
    if not os.path.exists(path):
        raise HostError(f"{flag}: SSH_AUTH_SOCK names {path}, which does not exist")
    return path
