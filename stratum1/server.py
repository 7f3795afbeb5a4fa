"""The NTP serving hot path: answer client requests from the published system snapshot.

``build_reply`` is the pure core (request + receive/transmit times + snapshot -> reply bytes);
``NtpServer`` owns one UDP socket, drains it in bounded batches from the event loop, stamps
receive times in the kernel, and routes mode 6 to a control handler. Mode 7 is never answered.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import netio
from .clock import Clock
from .eventloop import EventLoop
from .ntptime import ns_to_ntp64, seconds_to_short
from .packet import (
    CRYPTO_NAK,
    HEADER,
    HEADER_LEN,
    MODE_ACTIVE,
    MODE_CLIENT,
    MODE_CONTROL,
    MODE_PRIVATE,
    MODE_SERVER,
    MODE_UNSPEC,
    VERSION_MAX,
    VERSION_MIN,
    Mac,
    NtpPacket,
    PacketError,
)
from .snapshot import STRATUM_UNSYNC, SystemSnapshot

log = logging.getLogger(__name__)

#: ntpd's minimum poll exponent: replies carry max(request poll, this), as ntpd's fast_xmit does.
NTP_MINPOLL = 3
#: Stratum 16 ("unsynchronised") goes on the wire as 0, as ntpd's STRATUM_TO_PKT does;
#: clients map 0 back to 16.
STRATUM_PKT_UNSPEC = 0
#: Large enough for NTS-sized requests; longer datagrams are truncated and dropped.
RECV_BUFSIZE = 2048
DEFAULT_BATCH = 64
#: Replies per sendmmsg on the batch path. Each group gets a fresh clock read as its transmit
#: timestamp, so a reply's transmit time is early by the time the kernel takes to send the
#: replies ahead of it in its group, and never late. On loopback that send includes delivering
#: the reply, so groups of 2 already doubled the offset p99 at saturation (bench/RESULTS.md):
#: one reply per call, with the clock read right before it.
DEFAULT_TX_CHUNK = 1
_DROP_LOG_INTERVAL_NS = 60 * 1_000_000_000
#: How often the root dispersion in replies is regrown from the snapshot (it ages at 15 PPM).
TEMPLATE_REFRESH_NS = 1_000_000_000
_MAX_NTP64 = (1 << 64) - 1

Address = tuple
#: Given the request's MAC-covered bytes (header + extension fields) and its MAC, return a signer
#: for the reply (reply bytes -> key id + digest) or None: unknown key or bad digest.
Signer = Callable[[bytes], bytes]
Authenticator = Callable[[bytes, Mac, str], Signer | None]
#: Handles a mode-6 datagram; returns the answer to send, or None.
ControlHandler = Callable[[bytes, Address], "bytes | list[bytes] | None"]
#: Handles a symmetric/server/broadcast datagram (modes 1, 2, 4, 5) with its receive time.
PeerHandler = Callable[[bytes, Address, int], bytes | None]

#: What an access check (``restrict``, rate limiting) decides for one datagram.
SERVE = "serve"
DROP = "drop"
KOD = "kod"  # answer a client request with a RATE kiss-o'-death instead of the time
#: Given the sender's address and the packet's mode, return SERVE, DROP or KOD.
AccessCheck = Callable[[Address, int, int, int, bool], str]
#: The batched access check for plain client requests (mode 3, 48 bytes, versions 1-4): given
#: the senders of each run of requests, where the runs start, each request's version and
#: receive time, return the verdicts that are not SERVE by request index
#: (``stratum1.restrict.AccessControl.check_clients``).
ClientsCheck = Callable[[list, list, list, list], "dict[int, str]"]


def serve_all(_address: Address, _mode: int, _version: int, _rx_ns: int, _has_mac: bool) -> str:
    """The default access check: everyone is served (``restrict default`` with no flags).

    An access check gets the source address, mode, version, receive time and whether the
    datagram carries more than the header (a MAC: what ``notrust`` asks for)."""
    return SERVE


def no_keys(_covered: bytes, _mac: Mac, _host: str = "") -> Signer | None:
    """The default authenticator: no keys are known, so every MAC earns a crypto-NAK."""
    return None


def is_client_request(version: int, mode: int) -> bool:
    """Mode 3, or mode 0 from an NTPv1 client (RFC 1059 had no mode field)."""
    return mode == MODE_CLIENT or (mode == MODE_UNSPEC and version == 1)


class ReplyTemplate:
    """The snapshot's part of every reply, converted to wire values once per snapshot."""

    __slots__ = ("leap", "stratum", "precision", "root_delay", "root_dispersion", "refid",
                 "reference", "min_poll", "snapshot", "made_ns", "_prefix", "_tables")  # fmt: skip

    def __init__(
        self, snapshot: SystemSnapshot, min_poll: int = NTP_MINPOLL, now_ns: int | None = None
    ) -> None:
        """``now_ns`` given: the root dispersion is the snapshot's grown to that time."""
        self.snapshot = snapshot
        self.made_ns = now_ns
        self.leap = snapshot.leap & 0x03
        stratum = snapshot.stratum
        self.stratum = STRATUM_PKT_UNSPEC if stratum >= STRATUM_UNSYNC or stratum < 0 else stratum
        self.precision = max(-128, min(127, snapshot.precision))
        self.root_delay = _signed_short(snapshot.root_delay)
        self.root_dispersion = seconds_to_short(
            snapshot.root_dispersion if now_ns is None else snapshot.root_dispersion_at(now_ns)
        )
        refid = bytes(snapshot.refid[:4])
        self.refid = refid + bytes(4 - len(refid))
        # 0 means "never synchronised" and must stay 0 on the wire, not become 1970.
        self.reference = ns_to_ntp64(snapshot.reference_ns) if snapshot.reference_ns else 0
        self.min_poll = min_poll
        self._prefix: tuple[int, int, int] | None = None
        self._tables: tuple[Any, Any, Any] | None = None

    @property
    def min_poll_wire(self) -> int:
        return max(-128, min(127, self.min_poll))

    def prefix_words(self) -> tuple[int, int, int]:
        """Bytes 0-23 of every reply as three big-endian 64-bit words (version and poll 0)."""
        if self._prefix is None:
            wire = HEADER.pack((self.leap << 6) | MODE_SERVER, self.stratum, 0, self.precision,
                               self.root_delay, self.root_dispersion, self.refid,
                               self.reference, 0, 0, 0)  # fmt: skip
            self._prefix = tuple(int.from_bytes(wire[i : i + 8], "big") for i in (0, 8, 16))
        return self._prefix

    def batch_tables(self) -> tuple[Any, Any, Any]:
        """For replies built by array operations: word 0 of a reply is
        ``by_first[request byte 0] | by_poll[request byte 2]`` (version echoed, poll raised to
        the minimum), and words 1-2 are ``rest``. Made once per template."""
        if self._tables is None:
            import numpy as np

            w0, w1, w2 = self.prefix_words()
            byte = np.arange(256, dtype=np.uint64)
            by_first = np.uint64(w0) | ((byte & np.uint64(0x38)) << np.uint64(56))
            polls = np.maximum(byte.astype(np.uint8).view(np.int8), self.min_poll_wire)
            by_poll = polls.view(np.uint8).astype(np.uint64) << np.uint64(40)
            self._tables = (by_first, by_poll, np.array([w1, w2], dtype=np.uint64))
        return self._tables

    def render(self, version: int, request_poll: int, origin: int, rx_ns: int, tx_ns: int) -> bytes:
        """The 48-byte mode-4 reply to a request of ``version`` whose transmit was ``origin``."""
        return HEADER.pack(
            (self.leap << 6) | (version << 3) | MODE_SERVER,
            self.stratum,
            max(request_poll, self.min_poll),
            self.precision,
            self.root_delay,
            self.root_dispersion,
            self.refid,
            self.reference,
            origin,
            ns_to_ntp64(rx_ns),
            ns_to_ntp64(tx_ns),
        )


def _signed_short(seconds: float) -> int:
    """Seconds to NTP short format, keeping a negative root delay as two's complement."""
    if seconds >= 0:
        return min(seconds_to_short(seconds), 0x7FFFFFFF)
    return (-min(seconds_to_short(-seconds), 0x80000000)) & 0xFFFFFFFF


def build_reply(
    request: NtpPacket | bytes,
    rx_ns: int,
    snapshot: SystemSnapshot | ReplyTemplate,
    tx_ns: int,
    *,
    min_poll: int = NTP_MINPOLL,
) -> bytes:
    """The unauthenticated 48-byte reply to a client request (pure).

    The request's version is echoed and its transmit timestamp becomes the origin; ``rx_ns``
    and ``tx_ns`` are Unix ns. Raises ``PacketError`` if ``request`` is not a client request.
    Extension fields in the request are ignored; MAC handling is the caller's (``NtpServer``).
    """
    packet = request if isinstance(request, NtpPacket) else NtpPacket.unpack(request)
    if not VERSION_MIN <= packet.version <= VERSION_MAX:
        raise PacketError(f"unsupported NTP version {packet.version}")
    if not is_client_request(packet.version, packet.mode):
        raise PacketError(f"mode {packet.mode} (version {packet.version}) is not a client request")
    template = (
        snapshot if isinstance(snapshot, ReplyTemplate) else ReplyTemplate(snapshot, min_poll)
    )
    return template.render(packet.version, packet.poll, packet.transmit & _MAX_NTP64, rx_ns, tx_ns)


def build_kod(request: bytes, code: bytes = b"RATE", min_poll: int = NTP_MINPOLL) -> bytes:
    """A kiss-o'-death reply to a client request (pure): LI 3, stratum 0, the kiss code as refid.

    As ntpd does, it reveals no time of ours: the request's transmit timestamp fills origin,
    receive and transmit; precision, root delay/dispersion and reference time are echoed.
    """
    if len(request) < HEADER_LEN:
        raise PacketError("a kiss-o'-death answers a full 48-byte request")
    (lvm, _stratum, poll, precision, rdelay, rdisp, _refid,
     reference, _org, _rec, xmt) = HEADER.unpack_from(request)  # fmt: skip
    version = (lvm >> 3) & 0x07
    if not VERSION_MIN <= version <= VERSION_MAX or not is_client_request(version, lvm & 0x07):
        raise PacketError("a kiss-o'-death answers only a client request")
    kiss = (bytes(code[:4]) + bytes(4))[:4]
    return HEADER.pack((3 << 6) | (version << 3) | MODE_SERVER, STRATUM_PKT_UNSPEC,
                       max(poll, min_poll), precision, rdelay, rdisp, kiss, reference,
                       xmt, xmt, xmt)  # fmt: skip


@dataclass(slots=True)
class ServerStats:
    """Counters of everything the server received and what became of it."""

    received: int = 0
    replied: int = 0  # NTP replies sent (including crypto-NAKs)
    new_version: int = 0  # client requests of version 4
    old_version: int = 0  # client requests of versions 1-3
    ver1: int = 0  # NTPv1 packets of any mode (ntpq sysstats shows them apart)
    ver1_client: int = 0  # of which mode 3
    ver1_zero: int = 0  # of which mode 0 (how v1 clients asked)
    ver1_symm: int = 0  # of which mode 1
    crypto_naks: int = 0  # requests with a MAC we could not verify, answered with a crypto-NAK
    control: int = 0  # mode-6 packets handed to the control handler
    control_replied: int = 0
    peer: int = 0  # mode 1/2/4/5 packets handed to the peer handler
    malformed: int = 0  # too short, bad trailer, truncated
    bad_version: int = 0  # version 0 or above 4
    mode7: int = 0  # private mode: never answered (CVE-2013-5211)
    not_a_request: int = 0  # modes nobody here handles
    bad_auth: int = 0  # a request whose MAC is a bare key id (ntpd drops those too)
    oversize: int = 0  # a reply would have been larger than its request: not sent
    restricted: int = 0  # refused by the access check
    kod_sent: int = 0  # answered with a RATE kiss-o'-death (counted in replied too)
    sent: int = 0  # datagrams of any kind sent
    send_errors: int = 0
    recv_errors: int = 0
    unstamped: int = 0  # no kernel receive stamp came with the datagram: the clock was read

    @property
    def dropped(self) -> int:
        return (self.malformed + self.bad_version + self.mode7 + self.not_a_request
                + self.bad_auth + self.oversize + self.restricted)  # fmt: skip

    def as_dict(self) -> dict[str, int]:
        values = asdict(self)
        values["dropped"] = self.dropped
        return values


class NtpServer:
    """Answers NTP client requests on one UDP socket, driven by the daemon's EventLoop.

    The daemon calls ``open()``, registers ``fileno()``/``handle_readable`` with its loop (or
    calls ``attach(loop)``), and ``close()`` at exit. ``get_snapshot`` is read once per batch.
    """

    def __init__(
        self,
        address: tuple[str, int],
        get_snapshot: Callable[[], SystemSnapshot],
        clock: Clock,
        *,
        authenticate: Authenticator = no_keys,
        control_handler: ControlHandler | None = None,
        access: AccessCheck = serve_all,
        peer_handler: PeerHandler | None = None,
        min_poll: int = NTP_MINPOLL,
        max_batch: int = DEFAULT_BATCH,
        rcvbuf: int = netio.DEFAULT_RCVBUF,
        kernel_timestamps: bool = True,
        reuse_port: bool = False,
        batch: bool | None = None,
        tx_chunk: int = DEFAULT_TX_CHUNK,
        access_batch: ClientsCheck | None = None,
    ) -> None:
        """``batch``: use the recvmmsg/sendmmsg fast path (None: wherever it works, that is
        with kernel receive stamps, a specific local address, numpy and Linux libc).
        ``tx_chunk``: replies per sendmmsg there, each group stamped with a fresh clock read.
        ``access_batch``: decides a whole batch's plain client requests with the semantics of
        ``access`` (found by itself when ``access`` is an ``AccessControl.server_hook``)."""
        self._address = address
        self._get_snapshot = get_snapshot
        self._clock = clock
        self._now_ns = _clock_reader(clock)  # read before every send group
        self.authenticate = authenticate
        self.control_handler = control_handler
        self.access = access
        self._access_batch = access_batch
        self._clients_for: Any = None  # the access check _clients and _owner were found for
        self._clients: ClientsCheck | None = None
        self._owner: Any = None  # the AccessControl behind that check, if it is one's hook
        self.peer_handler = peer_handler
        self._min_poll = min_poll
        self._max_batch = max(1, max_batch)
        self._rcvbuf = rcvbuf
        # Kernel stamps are CLOCK_REALTIME: only meaningful when the served clock is the system's.
        self._kernel_timestamps = kernel_timestamps
        self._reuse_port = reuse_port
        self._want_batch = batch
        self._batch: Any = None  # netio.MmsgBatch while the fast path is on
        self._tx_chunk = max(1, tx_chunk)
        # The compiled hot path stamps from CLOCK_REALTIME itself, one reply per send.
        self._compiled = (netio.hotpath is not None and self._now_ns is netio.realtime_ns
                          and self._tx_chunk == 1)  # fmt: skip
        self._restamp = False  # the reply just built may take a later transmit timestamp
        self._busy = False  # the last read found a backlog: use the batch path
        self._sock: socket.socket | None = None
        self._template: ReplyTemplate | None = None
        self._loop: EventLoop | None = None
        self._last_drop_log_ns: int | None = None
        self.timestamp_mode = netio.TS_CLOCK
        self.stats = ServerStats()

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the UDP socket and enable kernel receive timestamps (best available)."""
        if self._sock is not None:
            return
        sock = netio.open_udp(self._address, self._rcvbuf, self._reuse_port)
        self.timestamp_mode = (
            netio.enable_rx_timestamps(sock) if self._kernel_timestamps else netio.TS_CLOCK
        )
        wildcard = netio.is_wildcard(self._address[0])
        if wildcard:
            netio.enable_pktinfo(sock)
        self._sock = sock
        want = self._want_batch
        if want is None:
            want = (self.timestamp_mode == netio.TS_TIMESTAMPING and not wildcard
                    and netio.batch_supported())  # fmt: skip
        if want:
            if wildcard or self.timestamp_mode != netio.TS_TIMESTAMPING:
                raise ValueError("batching needs SO_TIMESTAMPING and a specific local address")
            self._batch = netio.MmsgBatch(self._max_batch, RECV_BUFSIZE)
        batched = ""
        if self._batch is not None:
            batched = ", batched" + (", compiled send" if netio.compiled_send() else "")
        log.info("serving NTP on %s (receive timestamps: %s%s)", self.address,
                 self.timestamp_mode, batched)  # fmt: skip

    def attach(self, loop: EventLoop) -> None:
        """Open if needed and register with ``loop``."""
        self.open()
        self._loop = loop
        loop.add_reader(self.fileno(), self.handle_readable)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()
        self._sock = None
        self._batch = None

    def fileno(self) -> int:
        if self._sock is None:
            raise RuntimeError("NtpServer is not open")
        return self._sock.fileno()

    @property
    def address(self) -> tuple:
        """The bound address (with the real port when asked for port 0)."""
        if self._sock is None:
            return self._address
        return self._sock.getsockname()

    # -- the hot path -----------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        """True while the recvmmsg/sendmmsg fast path serves this socket."""
        return self._batch is not None

    def handle_readable(self) -> None:
        """Drain up to ``max_batch`` datagrams and answer each; poll() calls again for more."""
        sock = self._sock
        if sock is None:
            return
        limit = self._max_batch
        if self._batch is not None:
            if self._busy or self._compiled:
                self._handle_batch(sock, self._batch)
                return
            # Quiet: plain recvmsg is cheaper than arrays; a full round means load came back.
            limit = _SMALL_BATCH
        template = self._current_template()
        now_ns = self._clock.now_ns
        stamped = self.timestamp_mode != netio.TS_CLOCK
        for _ in range(limit):
            try:
                dgram = netio.receive(sock, RECV_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.stats.recv_errors += 1
                log.debug("recvmsg failed: %s", exc)
                return
            rx_ns = dgram.rx_ns
            if rx_ns is None or not stamped:
                # The kernel enables software stamping lazily (a static key flipped from a work
                # queue), so the first datagrams after open() may arrive without one.
                rx_ns = now_ns()
                self.stats.unstamped += stamped
            if dgram.truncated:
                self.stats.received += 1
                self._drop("malformed", dgram.address, "longer than the receive buffer")
                continue
            reply = self.process(dgram.data, dgram.address, rx_ns, template)
            if reply is None:
                continue
            if isinstance(reply, list):  # a fragmented mode-6 answer
                for part in reply:
                    self._send(sock, part, dgram.address, dgram.reply_cmsg)
            else:
                self._send(sock, reply, dgram.address, dgram.reply_cmsg, self._restamp)
        self._busy = self._batch is not None

    def _handle_batch(self, sock: socket.socket, mm: Any) -> None:
        """One recvmmsg; plain client requests are answered in place, each reply sent alone
        with its own transmit stamp; anything else takes the per-datagram path."""
        try:
            count = mm.receive(sock.fileno())
        except OSError as exc:
            self.stats.recv_errors += 1
            log.debug("recvmmsg failed: %s", exc)
            return
        if count == 0:
            self._busy = False
            return
        try:
            if count < _SMALL_BATCH:
                # Load dropped: numpy arrays cost more than they save, so plain reads take
                # over; the compiled path answers any count (its transmit stamps are read in
                # C right before each send) and reads this way throughout.
                self._busy = False
                if not self._compiled:
                    self._batch_slow_path(sock, mm, range(count), {})
                    return
            if self._compiled:
                self._answer_batch_compiled(sock, mm, count)
            else:
                self._answer_batch(sock, mm, count)
        finally:
            mm.reset(count)

    def _answer_batch(self, sock: socket.socket, mm: Any, count: int) -> None:
        """The plain client requests of a batch answered by numpy array operations."""
        import numpy as np

        template = self._current_template()
        first = mm.data[:count, 0]
        client_first, version4_first, version_of, _offset, _shift = _batch_constants()
        fast = client_first[first]  # one table lookup: _CLIENT_FIRST_BYTES
        fast &= mm.msg_len[:count] == HEADER_LEN
        fast &= mm.stamped(count)
        verdicts: dict[int, str] = {}
        access = self.access
        if access is not serve_all:
            rows = np.flatnonzero(fast)
            rx_ns = (mm.rx_sec[rows] * _NS_PER_S + mm.rx_nsec[rows]).tolist()
            versions = version_of[first[rows]].tolist()
            verdicts = self._batch_verdicts(access, mm, rows.tolist(), versions, rx_ns,
                                            mm.run_starts(rows))  # fmt: skip
            for i in verdicts:
                fast[i] = False
        slots: Any = count
        if not fast.all():
            self._batch_slow_path(sock, mm, np.flatnonzero(~fast).tolist(), verdicts)
            slots = np.flatnonzero(fast)
            if not len(slots):
                return
            first = first[slots]
        served = len(first)
        newer = int(np.count_nonzero(version4_first[first]))
        v1 = int(np.count_nonzero(version_of[first] == 1)) if served > newer else 0
        self._render_batch(mm, slice(0, count) if isinstance(slots, int) else slots,
                           served, template)  # fmt: skip
        sent, failed = _without_gc(lambda: mm.send(
            sock.fileno(), slots, HEADER_LEN, chunk=self._tx_chunk, clock_ns=self._now_ns,
            stamp_word=_TRANSMIT_WORD))  # fmt: skip
        self._count_batch(served, newer, v1, sent, failed)

    def _answer_batch_compiled(self, sock: socket.socket, mm: Any, count: int) -> None:
        """``_answer_batch`` with the per-datagram arithmetic in C (``stratum1/_hotpath.c``):
        the same decisions, counters and replies, about half the CPU per reply."""
        hot = netio.hotpath
        fd = sock.fileno()
        template = self._current_template()
        access = self.access
        owner = self._access_owner(access)
        known = owner.known_sender_args() if owner is not None else None
        if known is not None:
            self._answer_known_first(sock, mm, count, template, owner, known)
            return
        checked = access is not serve_all
        mask, rows, versions, rx_ns, starts, senders = hot.scan(
            mm.hdr_address, count, _CLIENT_FIRST_BYTES, checked)  # fmt: skip
        verdicts: dict[int, str] = {}
        if checked:
            verdicts = self._batch_verdicts(access, mm, rows, versions, rx_ns, starts, senders)
            for i in verdicts:
                mask[i] = 0
        by_first, by_poll, rest = template.batch_tables()
        served, sent, failed, newer, v1 = _without_gc(lambda: hot.reply_each(
            fd, mm.hdr_address, count, mask, by_first, by_poll, int(rest[0]), int(rest[1])))
        self._count_batch(served, newer, v1, sent, failed)
        self._answer_the_rest(sock, mm, count, mask, verdicts)

    def _answer_known_first(self, sock: socket.socket, mm: Any, count: int,
                            template: ReplyTemplate, owner: Any, known: tuple) -> None:  # fmt: skip
        """The compiled path with an ``AccessControl`` whose MRU list is compiled: one C call
        decides and answers the requests from senders the list holds (``serve_known``), so
        no Python runs between their receive and their sends; ``check_clients`` decides the
        rest, in order, then the batch's other packets are handled."""
        hot = netio.hotpath
        fd = sock.fileno()
        by_first, by_poll, rest = template.batch_tables()
        w1, w2 = int(rest[0]), int(rest[1])
        mask, checked, over, last, limited, served, sent, failed, newer, v1 = _without_gc(
            lambda: hot.serve_known(fd, mm.hdr_address, count, _CLIENT_FIRST_BYTES, by_first,
                                    by_poll, w1, w2, *known))  # fmt: skip
        verdicts: dict[int, str] = dict(owner.record_known(checked, over, last, limited))
        self._count_batch(served, newer, v1, sent, failed)
        if 2 in mask:
            # Requests from the first sender the list could not decide onward, in order.
            rows, versions, rx_ns, starts, senders = pending_runs(
                mask, *hot.scan(mm.hdr_address, count, _CLIENT_FIRST_BYTES, True)[1:])  # fmt: skip
            more = self._batch_verdicts(self.access, mm, rows, versions, rx_ns, starts,
                                        senders)  # fmt: skip
            verdicts.update(more)
            take = bytearray(count)
            for row in rows:
                take[row] = mask[row] = 0 if row in more else 1
            served, sent, failed, newer, v1 = _without_gc(lambda: hot.reply_each(
                fd, mm.hdr_address, count, take, by_first, by_poll, w1, w2))  # fmt: skip
            self._count_batch(served, newer, v1, sent, failed)
        self._answer_the_rest(sock, mm, count, mask, verdicts)

    def _answer_the_rest(self, sock: socket.socket, mm: Any, count: int, mask: bytearray,
                         verdicts: dict[int, str]) -> None:  # fmt: skip
        """After a batch's plain replies are out (slots 1 in ``mask``), its other datagrams
        through the per-datagram path: every Python step between receiving a batch and its
        sends lengthens each reply's path from clock read to the wire."""
        if mask.count(1) != count:
            self._batch_slow_path(sock, mm, [i for i in range(count) if not mask[i]],
                                  verdicts)  # fmt: skip

    def _count_batch(self, served: int, newer: int, v1: int, sent: int, failed: int) -> None:
        """Count the plain client requests a batch answered: ``newer`` of them version 4,
        ``v1`` version 1."""
        stats = self.stats
        stats.received += served
        stats.new_version += newer
        stats.old_version += served - newer
        stats.ver1 += v1
        stats.ver1_client += v1
        stats.sent += sent
        stats.replied += sent
        stats.send_errors += failed

    def _batch_verdicts(self, access: AccessCheck, mm: Any, rows: list[int],
                        versions: list[int], rx_ns: list[int], starts: list[int],
                        senders: list[tuple] | None = None) -> dict[int, str]:  # fmt: skip
        """The access check of a batch's plain client requests (in slots ``rows``, the
        positions in ``starts`` beginning each run from one sender; ``senders``: their
        addresses, if known): refused slot -> verdict."""
        import numpy as np

        verdicts: dict[int, str] = {}
        clients = self._clients_check(access)
        if clients is not None:
            # One call decides the batch; runs from one sender share the address.
            if senders is None:
                senders = mm.addresses(np.array([rows[k] for k in starts], dtype=np.intp))
            for k, verdict in clients(senders, starts, versions, rx_ns).items():
                verdicts[rows[k]] = verdict
            return verdicts
        # Rate limiting and restrict keep per-address state: ask per datagram.
        addresses = mm.addresses(np.array(rows, dtype=np.intp))
        for i, address, ver, rx in zip(rows, addresses, versions, rx_ns, strict=True):
            verdict = access(address, MODE_CLIENT, ver, rx, False)
            if verdict != SERVE:
                verdicts[i] = verdict
        return verdicts

    def _clients_check(self, access: AccessCheck) -> ClientsCheck | None:
        """The batched twin of ``access``: ``access_batch`` if given, else the owner's
        ``check_clients`` when ``access`` is an ``AccessControl.server_hook``."""
        self._find_access_owner(access)
        return self._clients

    def _access_owner(self, access: AccessCheck) -> Any:
        """The ``AccessControl`` behind ``access`` when it is one's ``server_hook`` and no
        other batched check was given, else None."""
        self._find_access_owner(access)
        return self._owner

    def _find_access_owner(self, access: AccessCheck) -> None:
        # Looked up once per access check, not per batch.
        if access is self._clients_for:
            return
        owner = None
        if self._access_batch is None and getattr(access, "__name__", "") == "server_hook":
            found = getattr(access, "__self__", None)
            if hasattr(found, "check_clients") and hasattr(found, "known_sender_args"):
                owner = found
        self._clients_for, self._owner = access, owner
        self._clients = self._access_batch or (owner.check_clients if owner is not None else None)

    def _render_batch(self, mm: Any, rows: Any, count: int, template: ReplyTemplate) -> None:
        """Turn the requests in ``rows`` into replies in place (48-byte client requests)."""
        import numpy as np

        words, data = mm.be64, mm.data
        by_first, by_poll, rest = template.batch_tables()
        # Word 0 (LI, version, mode, stratum, poll, precision, root delay) from two lookups:
        # the request's version bits and its poll (raised to our minimum poll).
        head = by_first[data[rows, 0]]
        head |= by_poll[data[rows, 2]]
        words[rows, 3] = words[rows, 5]  # origin: the request's transmit timestamp, verbatim
        words[rows, 0] = head
        words[rows, 1:3] = rest  # root dispersion, refid, reference time
        # Receive timestamp: the kernel's stamp as NTP seconds and fraction (rounded).
        _client, _v4, _version, era_offset, shift = _batch_constants()
        seconds = mm.rx_sec[rows].view(np.uint64) + era_offset
        seconds <<= shift
        fraction = mm.rx_nsec[rows] * _FRAC_PER_NS
        fraction += 0.5
        words[rows, 4] = seconds + fraction.astype(np.uint64)
        # The transmit timestamp (word 5) is written by MmsgBatch.send, group by group, from
        # a clock read just before each sendmmsg: never predicted, never later than the send.

    def _transmit_now(self) -> int:
        # Truncated, not rounded: a transmit timestamp must never be later than the send.
        return (((self._now_ns() + _NTP_UNIX_OFFSET_NS) << 32) // _NS_PER_S) & _MAX_NTP64

    def _batch_slow_path(
        self, sock: socket.socket, mm: Any, slots: list[int], verdicts: dict[int, str]
    ) -> None:
        for i in slots:
            try:
                dgram = mm.datagram(i)
            except ValueError as exc:
                self.stats.received += 1
                self._drop("malformed", ("?", 0), str(exc))
                continue
            rx_ns = dgram.rx_ns
            if rx_ns is None:
                rx_ns = self._clock.now_ns()
                self.stats.unstamped += 1
            if dgram.truncated:
                self.stats.received += 1
                self._drop("malformed", dgram.address, "longer than the receive buffer")
                continue
            reply = self._process(dgram.data, dgram.address, rx_ns, None, verdicts.get(i))
            if reply is None:
                continue
            if isinstance(reply, list):
                for part in reply:
                    self._send(sock, part, dgram.address, dgram.reply_cmsg)
            else:
                self._send(sock, reply, dgram.address, dgram.reply_cmsg, self._restamp)

    def answer(self, data: bytes, address: Address, rx_ns: int) -> None:
        """Answer, from this socket, a datagram that reached the port elsewhere (a serving
        worker forwards mode-6 and peer packets to the main process)."""
        sock = self._sock
        if sock is None:
            return
        reply = self._process(data, address, rx_ns, None, None)
        if reply is None:
            return
        if isinstance(reply, list):
            for part in reply:
                self._send(sock, part, address, None)
        else:
            self._send(sock, reply, address, None, self._restamp)

    def process(
        self, data: bytes, address: Address, rx_ns: int, template: ReplyTemplate | None = None
    ) -> bytes | list[bytes] | None:
        """Decide the answer to one datagram (None: no answer) and count what happened.

        Socket-free so that other transports (recvmmsg batches, a simulator) can reuse it.
        """
        return self._process(data, address, rx_ns, template, None)

    def _process(
        self,
        data: bytes,
        address: Address,
        rx_ns: int,
        template: ReplyTemplate | None,
        verdict: str | None,
    ) -> bytes | list[bytes] | None:
        self.stats.received += 1
        self._restamp = False
        if template is None:
            template = self._current_template()
        if not data:
            return self._drop("malformed", address, "empty datagram")
        first = data[0]
        mode = first & 0x07
        version = (first >> 3) & 0x07
        if mode == MODE_PRIVATE:
            return self._drop("mode7", address, "mode 7")
        if verdict is None:
            verdict = self.access(address, mode, version, rx_ns, len(data) > HEADER_LEN)
        if verdict == DROP:
            return self._drop("restricted", address, "refused by restrict")
        if mode == MODE_CONTROL:
            self.stats.control += 1
            if self.control_handler is None:
                return None
            answer = self.control_handler(data, address)
            if answer is not None:
                self.stats.control_replied += 1
            return answer
        if not VERSION_MIN <= version <= VERSION_MAX:
            return self._drop("bad_version", address, f"version {version}")
        if version == 1:
            self._count_ver1(mode)
        if not is_client_request(version, mode):
            if self.peer_handler is None or mode == MODE_UNSPEC:
                return self._drop("not_a_request", address, f"mode {mode}")
            if verdict == KOD:
                return self._drop("restricted", address, "rate limited")
            self.stats.peer += 1
            return self._guard(self.peer_handler(data, address, rx_ns), data, address)
        return self._answer_client(data, address, version, rx_ns, template, verdict == KOD)

    def _count_ver1(self, mode: int) -> None:
        stats = self.stats
        stats.ver1 += 1
        if mode == MODE_CLIENT:
            stats.ver1_client += 1
        elif mode == MODE_UNSPEC:
            stats.ver1_zero += 1
        elif mode == MODE_ACTIVE:
            stats.ver1_symm += 1

    def _answer_client(
        self,
        data: bytes,
        address: Address,
        version: int,
        rx_ns: int,
        template: ReplyTemplate,
        kod: bool = False,
    ) -> bytes | None:
        mac: Mac | None = None
        if len(data) == HEADER_LEN:
            # The common case: one struct unpack, no trailer to parse.
            fields = HEADER.unpack(data)
            poll, transmit = fields[2], fields[10]
        else:
            try:
                packet = NtpPacket.unpack(data)
            except PacketError as exc:
                return self._drop("malformed", address, str(exc))
            poll, transmit, mac = packet.poll, packet.transmit, packet.mac
        if version == 4:
            self.stats.new_version += 1
        else:
            self.stats.old_version += 1
        if kod:
            self.stats.kod_sent += 1
            return self._guard(build_kod(data, min_poll=self._min_poll), data, address)
        if mac is None:
            reply = template.render(version, poll, transmit, rx_ns, self._clock.now_ns())
            # Nothing signs this reply: the socket path may read the clock again, later.
            self._restamp = True
            return self._guard(reply, data, address)
        if len(mac) == 4:
            return self._drop("bad_auth", address, "request carries a bare key id")
        signer = self.authenticate(data[: len(data) - len(mac)], mac, address[0])
        reply = template.render(version, poll, transmit, rx_ns, self._clock.now_ns())
        if signer is None:
            self.stats.crypto_naks += 1
            return self._guard(reply + CRYPTO_NAK, data, address)
        return self._guard(reply + signer(reply), data, address)

    def _guard(self, reply: bytes | None, data: bytes, address: Address) -> bytes | None:
        # Unauthenticated answers are never larger than the request: no amplification.
        if reply is not None and len(reply) > len(data):
            return self._drop("oversize", address, f"{len(reply)}-byte reply to {len(data)} bytes")
        return reply

    def _send(
        self,
        sock: socket.socket,
        reply: bytes,
        address: Address,
        cmsg: netio.Cmsg | None,
        restamp: bool = False,
    ) -> None:
        if restamp and len(reply) == HEADER_LEN:
            # The transmit timestamp read as late as possible: just before the send call.
            reply = reply[:40] + _TRANSMIT.pack(self._transmit_now())
        try:
            netio.send(sock, reply, address, cmsg)
        except OSError as exc:
            # A full send buffer or an unreachable client: drop this reply, keep serving.
            self.stats.send_errors += 1
            log.debug("sendto %s failed: %s", address, exc)
            return
        self.stats.sent += 1
        if _is_mode4(reply):
            self.stats.replied += 1

    def _current_template(self) -> ReplyTemplate:
        snapshot = self._get_snapshot()
        template = self._template
        now = self._clock.now_ns()
        if (
            template is None
            or template.snapshot is not snapshot
            or not 0 <= now - template.made_ns < TEMPLATE_REFRESH_NS
        ):
            template = self._template = ReplyTemplate(snapshot, self._min_poll, now)
        return template

    def _drop(self, reason: str, address: Address, detail: str) -> None:
        setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        now = self._clock.monotonic_ns()
        last = self._last_drop_log_ns
        # Logged once per burst: a flood of junk must not become a flood of log lines.
        if last is None or now - last >= _DROP_LOG_INTERVAL_NS:
            self._last_drop_log_ns = now
            log.info("dropped a packet from %s (%s: %s); more drops are counted, not logged, "
                     "for 60 s", address[0] if address else "?", reason, detail)  # fmt: skip
        else:
            log.debug("dropped a packet from %s (%s: %s)", address, reason, detail)
        return None


_NTP_UNIX_OFFSET_S = 2_208_988_800
_NS_PER_S = 1_000_000_000
_NTP_UNIX_OFFSET_NS = _NTP_UNIX_OFFSET_S * _NS_PER_S
_TRANSMIT = struct.Struct("!Q")
_TRANSMIT_WORD = 5  # bytes 40-47 of a reply, as a big-endian 64-bit word
#: Fewer datagrams than this in a batch go through the per-datagram path.
_SMALL_BATCH = 4
_FRAC_PER_NS = (1 << 32) / 1_000_000_000


#: Byte 0 of a request the batch path may answer: mode 3 and a version we answer (the LI
#: bits may be anything). A v1 mode-0 request takes the per-datagram path.
_CLIENT_FIRST_BYTES = bytes(
    int(b & 0x07 == MODE_CLIENT and VERSION_MIN <= (b >> 3) & 0x07 <= VERSION_MAX)
    for b in range(256)
)


def pending_runs(mask: bytearray, rows: list[int], versions: list[int], rx_ns: list[int],
                 starts: list[int], senders: list[tuple]) -> tuple[list, list, list, list, list]:
    """Of a batch's plain requests as ``scan`` lists them (slots ``rows``, runs from one
    sender beginning at ``starts``, named by ``senders``), those whose slot is 2 in ``mask``
    (left undecided by ``serve_known``), as the same five lists. A run is cut where a request
    between is left out, so every run stays one sender's consecutive requests."""
    out_rows: list[int] = []
    out_versions: list[int] = []
    out_rx: list[int] = []
    out_starts: list[int] = []
    out_senders: list[tuple] = []
    run = -1
    previous = -2
    for k, row in enumerate(rows):
        while run + 1 < len(starts) and starts[run + 1] <= k:
            run += 1
        if mask[row] != 2:
            continue
        if k != previous + 1 or starts[run] == k:
            out_starts.append(len(out_rows))
            out_senders.append(senders[run])
        out_rows.append(row)
        out_versions.append(versions[k])
        out_rx.append(rx_ns[k])
        previous = k
    return out_rows, out_versions, out_rx, out_starts, out_senders


def _without_gc(send: Callable[[], Any]) -> Any:
    """Run ``send`` with the cyclic collector paused: a collection between a transmit clock
    read and its send would make that timestamp old; a due collection runs after."""
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        return send()
    finally:
        if collecting:
            gc.enable()


@functools.cache
def _batch_constants() -> tuple[Any, Any, Any, Any, Any]:
    """For the batch path (numpy imported on first use): lookup tables on a request's first
    byte (LI, version, mode): "mode 3 with a version we answer", "version 4", the version;
    the NTP era offset and 32 as numpy scalars."""
    import numpy as np

    version = (np.arange(256) >> 3) & 0x07
    client = np.frombuffer(_CLIENT_FIRST_BYTES, np.uint8).astype(bool)
    return client, version == 4, version, np.uint64(_NTP_UNIX_OFFSET_S), np.uint64(32)


def _clock_reader(clock: Clock) -> Callable[[], int]:
    """``clock.now_ns``, or the very same CLOCK_REALTIME read without the Python frames
    around it when ``clock`` is the system clock (possibly behind FrozenDisciplineClock)."""
    from .clock import FrozenDisciplineClock, SystemClock

    inner: Any = clock
    while type(inner).now_ns is FrozenDisciplineClock.now_ns:
        inner = inner._inner
    realtime = [SystemClock.now_ns]
    try:
        from .sysclock import KernelClock

        realtime.append(KernelClock.now_ns)
    except ImportError:  # pragma: no cover - sysclock is part of the package
        pass
    if type(inner).now_ns in realtime:
        return netio.realtime_ns
    return clock.now_ns


def _is_mode4(data: bytes) -> bool:
    # Control and peer answers are counted by their own counters, not as NTP replies.
    return bool(data) and data[0] & 0x07 == MODE_SERVER


__all__ = [
    "DROP",
    "KOD",
    "NTP_MINPOLL",
    "SERVE",
    "AccessCheck",
    "Authenticator",
    "ClientsCheck",
    "ControlHandler",
    "NtpServer",
    "PeerHandler",
    "ReplyTemplate",
    "ServerStats",
    "Signer",
    "build_kod",
    "build_reply",
    "is_client_request",
    "no_keys",
    "pending_runs",
    "serve_all",
]
