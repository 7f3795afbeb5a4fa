"""Opt-in SO_REUSEPORT serving workers: forked processes that answer NTP client requests.

The daemon stays one process unless asked (``--workers N``). Each worker binds its own
``SO_REUSEPORT`` socket on the serving address; the kernel spreads clients over the group (the
main process's socket included) by a hash of the 4-tuple. A worker answers client requests from
the last snapshot the main process sent it over a pipe; a mode-6 or peer packet that hashes to a
worker is forwarded to the main process, which answers it from its own socket on the same port.
Each worker keeps its own restrict/rate-limit state (its own MRU list), inherited at fork.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .clock import Clock
from .eventloop import EventLoop, Timer
from .server import AccessCheck, Authenticator, NtpServer, no_keys, serve_all
from .snapshot import SystemSnapshot

log = logging.getLogger(__name__)

#: How often the main process looks for a new snapshot to hand to the workers.
SNAPSHOT_POLL_S = 0.05
#: Forwarded datagrams the main process handles per wake-up (bounded, like every loop).
FORWARD_BATCH = 64
_FRAME = struct.Struct("!I")
#: A forwarded datagram: receive time, port, flowinfo, scope id, host length; host; data.
_FORWARD = struct.Struct("!qHIIB")
_MAX_FRAME = 1 << 20
_STOP_TIMEOUT_S = 2.0


def encode_forward(data: bytes, address: tuple, rx_ns: int) -> bytes:
    """One datagram a worker hands to the main process, with its sender and receive time."""
    host = address[0].encode()
    flowinfo, scope = (address[2], address[3]) if len(address) >= 4 else (0, 0)
    return _FORWARD.pack(rx_ns, address[1], flowinfo, scope, len(host)) + host + data


def decode_forward(message: bytes) -> tuple[bytes, tuple, int]:
    """The inverse of ``encode_forward``; raises ValueError on a malformed message."""
    if len(message) < _FORWARD.size:
        raise ValueError("short forwarded datagram")
    rx_ns, port, flowinfo, scope, hlen = _FORWARD.unpack_from(message)
    end = _FORWARD.size + hlen
    if len(message) < end:
        raise ValueError("truncated forwarded address")
    host = message[_FORWARD.size : end].decode()
    address: tuple = (host, port, flowinfo, scope) if ":" in host else (host, port)
    return message[end:], address, rx_ns


def encode_snapshot(snapshot: SystemSnapshot) -> bytes:
    payload = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(payload)) + payload


class SnapshotReader:
    """Reassembles length-prefixed snapshots from a pipe (a worker's side)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SystemSnapshot]:
        self._buffer += chunk
        out = []
        while len(self._buffer) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(self._buffer)
            if size > _MAX_FRAME:
                raise ValueError(f"snapshot frame of {size} bytes")
            if len(self._buffer) < _FRAME.size + size:
                break
            payload = self._buffer[_FRAME.size : _FRAME.size + size]
            self._buffer = self._buffer[_FRAME.size + size :]
            snapshot = pickle.loads(payload)  # our own parent wrote it, over a private pipe
            if isinstance(snapshot, SystemSnapshot):
                out.append(snapshot)
        return out


class WorkerPool:
    """N forked serving workers for one address, fed with snapshots by the main process.

    ``start`` forks; call it before the process starts any thread or opens the main server
    socket (a fork copies only the calling thread, and a worker should not hold the main
    socket). The main process's own ``NtpServer`` for the address must use
    ``reuse_port=True``; ``attach`` then registers the forwarding channel and the snapshot
    watch with the main loop. ``stop`` ends the workers (bounded wait).
    """

    def __init__(
        self,
        address: tuple[str, int],
        count: int,
        clock: Clock,
        *,
        access: AccessCheck = serve_all,
        authenticate: Authenticator = no_keys,
        server_options: dict[str, Any] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        if address[0] in ("", "0.0.0.0", "::"):
            raise ValueError("workers serve a specific address, not the wildcard")
        self.address = address
        self.count = count
        self._clock = clock
        self._access = access
        self._authenticate = authenticate
        self._options = dict(server_options or {})
        self._pipes: dict[int, int] = {}  # pid -> write end of its snapshot pipe
        self._forward_r: socket.socket | None = None
        self._main: NtpServer | None = None
        self._loop: EventLoop | None = None
        self._timer: Timer | None = None
        self._get_snapshot: Callable[[], SystemSnapshot] | None = None
        self._last: SystemSnapshot | None = None
        self.forwarded = 0  # datagrams the workers handed to the main process
        self.forward_errors = 0
        self.publish_skipped = 0  # a worker's pipe was full: it keeps its previous snapshot

    @property
    def pids(self) -> list[int]:
        return list(self._pipes)

    def start(self, snapshot: SystemSnapshot) -> None:
        """Fork the workers; each begins serving ``snapshot`` at once."""
        if self._pipes:
            raise RuntimeError("the worker pool is already running")
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        parent_end.setblocking(False)
        child_end.setblocking(False)
        self._forward_r = parent_end
        self._last = snapshot
        try:
            for _ in range(self.count):
                read_fd, write_fd = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child, which never returns
                    os.close(write_fd)
                    parent_end.close()
                    for fd in self._pipes.values():
                        os.close(fd)
                    _worker_main(self, read_fd, child_end, snapshot)
                os.close(read_fd)
                os.set_blocking(write_fd, False)
                self._pipes[pid] = write_fd
        except BaseException:
            self.stop()
            raise
        finally:
            child_end.close()
        log.info("serving %s:%d with %d SO_REUSEPORT workers (pids %s)", self.address[0],
                 self.address[1], self.count, ", ".join(map(str, self._pipes)))  # fmt: skip

    def attach(
        self, loop: EventLoop, main: NtpServer, get_snapshot: Callable[[], SystemSnapshot]
    ) -> None:
        """Answer forwarded datagrams through ``main`` and pass on every new snapshot."""
        if self._forward_r is None:
            raise RuntimeError("start the worker pool first")
        self._loop, self._main, self._get_snapshot = loop, main, get_snapshot
        loop.add_reader(self._forward_r.fileno(), self.handle_forwarded)
        self._timer = loop.call_every(SNAPSHOT_POLL_S, self._watch)

    def _watch(self) -> None:
        if self._get_snapshot is None:
            return
        snapshot = self._get_snapshot()
        if snapshot is not self._last:
            self.publish(snapshot)
        self._reap()

    def publish(self, snapshot: SystemSnapshot) -> None:
        """Send ``snapshot`` to every worker (never blocks: a full pipe skips that worker)."""
        self._last = snapshot
        frame = encode_snapshot(snapshot)
        for fd in self._pipes.values():
            try:
                written = os.write(fd, frame)
            except (BlockingIOError, BrokenPipeError):
                self.publish_skipped += 1
                continue
            if written != len(frame):  # pragma: no cover - a frame is far below PIPE_BUF
                self.publish_skipped += 1

    def handle_forwarded(self) -> None:
        """Answer up to FORWARD_BATCH datagrams the workers forwarded (mode 6, peers)."""
        sock, main = self._forward_r, self._main
        if sock is None or main is None:
            return
        for _ in range(FORWARD_BATCH):
            try:
                message = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            try:
                data, address, rx_ns = decode_forward(message)
            except (ValueError, UnicodeDecodeError):
                self.forward_errors += 1
                continue
            self.forwarded += 1
            main.answer(data, address, rx_ns)

    def _reap(self) -> None:
        for pid in list(self._pipes):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                # Its socket left the reuseport group: the kernel now hashes over the others.
                log.warning("serving worker %d exited (status %d)", pid, status)
                os.close(self._pipes.pop(pid))

    def stop(self) -> None:
        """End every worker: close its pipe, SIGTERM, wait (bounded), then SIGKILL."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self._forward_r is not None:
            self._loop.remove_reader(self._forward_r.fileno())
        self._loop = None
        pids = list(self._pipes)
        for pid, fd in self._pipes.items():
            os.close(fd)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._pipes.clear()
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for pid in pids:
            while True:
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        if self._forward_r is not None:
            self._forward_r.close()
            self._forward_r = None


class _Worker:
    """A worker process's state: its server, its loop and the snapshot it serves."""

    def __init__(
        self, pool: WorkerPool, snapshot_fd: int, forward: socket.socket, snapshot: SystemSnapshot
    ) -> None:
        self.snapshot = snapshot
        self._fd = snapshot_fd
        self._forward = forward
        self._reader = SnapshotReader()
        self.loop = EventLoop()
        self.server = NtpServer(
            pool.address,
            lambda: self.snapshot,
            pool._clock,
            access=pool._access,
            authenticate=pool._authenticate,
            control_handler=self._forward_control,
            peer_handler=self._forward_peer,
            reuse_port=True,
            **pool._options,
        )

    def run(self) -> None:
        os.set_blocking(self._fd, False)
        self.loop.add_reader(self._fd, self._read_snapshots)
        self.loop.add_signal_handler(signal.SIGTERM, self.loop.stop)
        self.server.attach(self.loop)
        self.loop.run()

    def _read_snapshots(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if not chunk:  # the main process is gone: so are we
            self.loop.stop()
            return
        for snapshot in self._reader.feed(chunk):
            self.snapshot = snapshot

    def _forward_control(self, data: bytes, address: tuple) -> None:
        self._send_forward(data, address, self.server._clock.now_ns())

    def _forward_peer(self, data: bytes, address: tuple, rx_ns: int) -> None:
        self._send_forward(data, address, rx_ns)

    def _send_forward(self, data: bytes, address: tuple, rx_ns: int) -> None:
        try:
            self._forward.send(encode_forward(data, address, rx_ns))
        except OSError as exc:  # the main process is busy: the client will ask again
            log.debug("could not forward a datagram from %s: %s", address[0], exc)


def _worker_main(
    pool: WorkerPool, snapshot_fd: int, forward: socket.socket, snapshot: SystemSnapshot
) -> NoReturn:  # pragma: no cover - runs in the forked child
    status = 0
    try:
        # The parent's signal set-up points at its own wake-up pipe: start afresh.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _Worker(pool, snapshot_fd, forward, snapshot).run()
    except BaseException:
        log.exception("serving worker failed")
        status = 1
    finally:
        os._exit(status)


__all__ = [
    "FORWARD_BATCH",
    "SNAPSHOT_POLL_S",
    "SnapshotReader",
    "WorkerPool",
    "decode_forward",
    "encode_forward",
    "encode_snapshot",
]
