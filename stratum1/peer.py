"""The client side of one network association (server, pool member or symmetric peer), sans-I/O.

``Peer`` builds the requests (mode 3, or mode 1 for ``peer``), runs the poll schedule with its
iburst/burst volleys, puts every reply through RFC 5905's sanity tests (counted per reason), and
hands valid ones to the ``Association`` as a ``Measurement`` with the header values. It never
reads a clock or a socket: the caller passes "now", the receive time and the bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .association import MAXPOLL_LIMIT, MINPOLL_LIMIT, Association
from .clockfilter import MAXDISPERSE, PHI
from .ntptime import NS_PER_S
from .packet import (
    MODE_ACTIVE,
    MODE_CLIENT,
    MODE_PASSIVE,
    MODE_SERVER,
    NtpPacket,
    PacketError,
    short_from_seconds,
    timestamp_from_ns,
)
from .sample import LEAP_NOTINSYNC, Measurement
from .snapshot import STRATUM_UNSYNC, SystemSnapshot

#: Packets in a volley: ``iburst`` while unreachable, ``burst`` while reachable (ntpd's figures).
IBURST_COUNT = 6
BURST_COUNT = 8
#: Seconds between the packets of a volley.
BURST_SPACING_S = 2.0
#: Polls without an answer after which a pool member is replaced (and a server name resolved
#: again): ntpd's NTP_UNREACH.
REPLACE_UNREACH = 10
#: The first poll goes out within this many seconds of start (spread so that many associations
#: configured together do not fire at once).
STARTUP_SPREAD_S = 1.0

#: Why a received packet was dropped (the counter names), in the order the tests run.
REASONS = (
    "malformed",  # not a decodable NTP packet
    "bad_mode",  # not a server (or symmetric) reply
    "duplicate",  # TEST1: same transmit timestamp as the last packet accepted
    "bogus",  # TEST2: origin is not the transmit timestamp of our outstanding request
    "invalid",  # TEST3: receive or transmit timestamp is zero
    "auth",  # TEST5: MAC missing, unknown key or wrong digest
    "crypto_nak",  # TEST5: the server could not authenticate us
    "kod",  # kiss-o'-death (counted whether it is RATE, DENY, RSTR or another code)
    "unsynchronized",  # TEST6: leap 3, or no/future reference time
    "stratum",  # TEST7: stratum 16 or above, or above the ceiling
    "bad_header",  # TEST7: root delay negative, or root distance beyond MAXDISPERSE
    "bad_delay",  # the round trip is beyond MAXDISPERSE
    "distance",  # TEST11: the sample's root distance exceeds maxdist
)

KISS_RATE = b"RATE"
KISS_DENY = b"DENY"
KISS_RSTR = b"RSTR"


class PeerAuth(Protocol):
    """How requests are signed and replies checked for an association with ``key N``."""

    keyid: int

    def sign(self, data: bytes) -> bytes:
        """``data`` followed by key id and digest."""
        ...

    def check(self, data: bytes, host: str | None) -> str | None:
        """None when ``data`` carries a valid MAC with our key; else ``"auth"`` or
        ``"crypto_nak"``."""
        ...


class KeyAuth:
    """``PeerAuth`` over a ``stratum1.auth.Authenticator`` and one trusted key."""

    def __init__(self, authenticator: object, keyid: int) -> None:
        from .auth import Authenticator

        if not isinstance(authenticator, Authenticator):
            raise TypeError("KeyAuth needs a stratum1.auth.Authenticator")
        reason = authenticator.check_association_key(keyid)
        if reason is not None:
            raise ValueError(reason)
        self.authenticator = authenticator
        self.keyid = keyid

    def sign(self, data: bytes) -> bytes:
        return self.authenticator.sign(self.keyid, data)

    def check(self, data: bytes, host: str | None) -> str | None:
        from .auth import AuthResult

        result, key = self.authenticator.classify(data, host)
        if result is AuthResult.CRYPTO_NAK:
            return "crypto_nak"
        if result is not AuthResult.OK or key is None or key.keyid != self.keyid:
            return "auth"
        return None


@dataclass(slots=True)
class PeerStats:
    """What became of every packet this association sent and received."""

    sent: int = 0
    received: int = 0
    accepted: int = 0
    volleys: int = 0
    missed_polls: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    kod_codes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PollAction:
    """What the I/O layer does at a poll timer: send ``request`` (if any), call ``poll`` again
    after ``next_s`` seconds; ``missed`` says the previous poll went unanswered (the
    association changed: run the system update)."""

    request: bytes | None
    next_s: float
    missed: bool = False


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """The verdict on one received packet.

    ``reason`` is None when the sample went to the association (``measurement``); else one of
    ``REASONS``. ``kiss`` holds a kiss code; ``demobilize`` asks the I/O layer to drop the
    association (DENY/RSTR); ``reschedule_s`` asks it to move the next poll (RATE).
    """

    reason: str | None
    measurement: Measurement | None = None
    kiss: bytes | None = None
    demobilize: bool = False
    reschedule_s: float | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


class Peer:
    """One association's protocol state: request, volley, sanity tests, KoD, poll backoff.

    ``association`` receives the measurements; its ``poll`` exponent (with its own backoff
    after NTP_UNREACH silent polls) sets the interval. ``get_snapshot`` gives the system
    variables a symmetric (mode 1) packet carries.
    """

    def __init__(
        self,
        association: Association,
        *,
        mode: int = MODE_CLIENT,
        version: int = 4,
        iburst: bool = False,
        burst: bool = False,
        auth: PeerAuth | None = None,
        ceiling: int = STRATUM_UNSYNC,
        maxdist: float = 1.5,
        sys_precision: int = -20,
        get_snapshot: Callable[[], SystemSnapshot] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in (MODE_CLIENT, MODE_ACTIVE):
            raise ValueError(f"a network association sends mode 3 or 1, not {mode}")
        if not 1 <= version <= 4:
            raise ValueError(f"NTP version {version} is outside 1..4")
        self.association = association
        self.mode = mode
        self.version = version
        self.iburst = iburst
        self.burst = burst
        self.auth = auth
        self.ceiling = ceiling
        self.maxdist = maxdist
        self.sys_precision = sys_precision
        self.get_snapshot = get_snapshot
        self.rng = rng if rng is not None else random.Random()
        self.stats = PeerStats()
        self.demobilized: str | None = None  # the kiss code that ended the association
        self.kod_rate = 0

        self._volley_left = 0  # packets still to send in this volley
        self._volley_start_ns = 0
        self._answered = False  # a valid reply arrived for the current poll
        self._started = False
        self._polls = 0
        self._aorg = 0  # transmit field of the outstanding request (0: none)
        self._t1_ns = 0  # our clock when that request left
        self._last_xmt = 0  # transmit field of the last packet accepted (TEST1)
        # Symmetric mode: the peer's last transmit and when it arrived, echoed back to it.
        self._peer_org = 0
        self._peer_rec_ns = 0

    # -- the poll schedule -------------------------------------------------------------------
    def start(self) -> float:
        """Seconds until the first ``poll`` call."""
        return self.rng.uniform(0.0, STARTUP_SPREAD_S)

    def poll(self, now_ns: int) -> PollAction:
        """A poll timer fired: settle the last poll, maybe start a volley, build the request."""
        if self.demobilized is not None:
            return PollAction(None, float(2**MAXPOLL_LIMIT))
        a = self.association
        missed = False
        if self._volley_left == 0:
            if self._started and not self._answered:
                a.poll_missed(now_ns)
                self.stats.missed_polls += 1
                missed = True
            self._started = True
            self._polls += 1
            self._answered = False
            self._volley_left = self._volley_size()
            if self._volley_left > 1:
                self.stats.volleys += 1
            self._volley_start_ns = now_ns
        request = self.request(now_ns)
        self._volley_left -= 1
        if self._volley_left > 0:
            return PollAction(request, BURST_SPACING_S, missed)
        return PollAction(request, self._interval_s(now_ns), missed)

    def _volley_size(self) -> int:
        reach = self.association.reach
        if self.iburst and reach == 0:
            return IBURST_COUNT
        if self.burst and reach != 0:
            return BURST_COUNT
        return 1

    def _interval_s(self, now_ns: int) -> float:
        """Seconds from the last packet of a volley to the next poll: 2**poll from the volley's
        start, with ntpd's up-to-6% random stretch so associations do not fall into step."""
        base = float(2**self.association.poll)
        elapsed = (now_ns - self._volley_start_ns) / NS_PER_S
        stretch = 1.0 + self.rng.randrange(256) / 4096
        return max(BURST_SPACING_S, base * stretch - max(0.0, elapsed))

    @property
    def replace_due(self) -> bool:
        """The association stayed unreachable for REPLACE_UNREACH polls: a pool replaces it,
        a server name is resolved again."""
        return self.association.reach == 0 and self.association.unreach >= REPLACE_UNREACH

    # -- transmit ----------------------------------------------------------------------------
    def request(self, now_ns: int) -> bytes:
        """The packet to send at ``now_ns`` (our clock); it becomes the outstanding request."""
        a = self.association
        if self.mode == MODE_CLIENT:
            # Data minimisation (as chrony does): a client request tells the server nothing
            # about us, and a random transmit field is an origin no off-path attacker guesses.
            xmt = self.rng.getrandbits(64) or 1
            packet = NtpPacket(version=self.version, mode=MODE_CLIENT, poll=a.poll, transmit=xmt)
        else:
            snap = self.get_snapshot() if self.get_snapshot is not None else SystemSnapshot()
            xmt = timestamp_from_ns(now_ns)
            packet = NtpPacket(
                leap=snap.leap,
                version=self.version,
                mode=MODE_ACTIVE,
                stratum=snap.stratum if snap.stratum < STRATUM_UNSYNC else 0,
                poll=a.poll,
                precision=max(-128, min(127, snap.precision)),
                root_delay=short_from_seconds(snap.root_delay),
                root_dispersion=short_from_seconds(snap.root_dispersion_at(now_ns)),
                refid=bytes(snap.refid[:4]).ljust(4, b"\0"),
                reference=timestamp_from_ns(snap.reference_ns),
                origin=self._peer_org,
                receive=timestamp_from_ns(self._peer_rec_ns),
                transmit=xmt,
            )
        data = packet.pack()
        if self.auth is not None:
            data = self.auth.sign(data)
        self._aorg = xmt
        self._t1_ns = now_ns
        self.stats.sent += 1
        return data

    def mark_sent(self, t1_ns: int) -> None:
        """The outstanding request actually left at ``t1_ns`` (read just before the send call):
        a tighter t1 than the ``now_ns`` it was built at."""
        if self._aorg:
            self._t1_ns = t1_ns

    # -- receive -----------------------------------------------------------------------------
    def receive(self, data: bytes, rx_ns: int, host: str | None = None) -> ReplyResult:
        """Check one packet from this association's address (``rx_ns``: its arrival on our
        clock, ideally the kernel's stamp) and feed the association when it passes."""
        self.stats.received += 1
        try:
            p = NtpPacket.unpack(data)
        except PacketError:
            return self._drop("malformed")
        if self.mode == MODE_CLIENT and p.mode != MODE_SERVER:
            return self._drop("bad_mode")
        if self.mode == MODE_ACTIVE and p.mode not in (MODE_ACTIVE, MODE_PASSIVE):
            return self._drop("bad_mode")
        if p.transmit == self._last_xmt and p.transmit != 0:
            return self._drop("duplicate")
        if self.mode == MODE_ACTIVE and p.transmit != 0:
            # Whatever the verdict, a symmetric peer's last transmit is what we echo next.
            self._peer_org = p.transmit
            self._peer_rec_ns = rx_ns
        if self._aorg == 0 or p.origin != self._aorg:
            return self._drop("bogus")
        if p.receive == 0 or p.transmit == 0:
            return self._drop("invalid")
        if self.auth is not None:
            problem = self.auth.check(data, host)
            if problem is not None:
                return self._drop(problem)
        # The origin matched: this is the answer to our request; a replay of it is a duplicate.
        self._aorg = 0
        self._last_xmt = p.transmit
        if p.stratum == 0:
            return self._kiss(p)
        if p.leap == LEAP_NOTINSYNC or p.reference == 0:
            return self._drop("unsynchronized")
        t1 = self._t1_ns
        t2 = p.receive_ns(t1)
        t3 = p.transmit_ns(t1)
        t4 = rx_ns
        if p.reference_ns(t1) > t3:
            return self._drop("unsynchronized")
        if p.stratum >= STRATUM_UNSYNC or p.stratum >= self.ceiling:
            return self._drop("stratum")
        root_delay, root_disp = p.root_delay_s, p.root_dispersion_s
        if root_delay < 0 or root_delay / 2 + root_disp >= MAXDISPERSE:
            return self._drop("bad_header")
        offset = ((t2 - t1) + (t3 - t4)) / 2 / NS_PER_S
        delay = ((t4 - t1) - (t3 - t2)) / NS_PER_S
        if abs(delay) >= MAXDISPERSE:
            return self._drop("bad_delay")
        delay = max(delay, 2.0**self.sys_precision)
        dispersion = (
            2.0**p.precision + 2.0**self.sys_precision + PHI * max(0, t4 - t1) / NS_PER_S
        )
        if (delay + root_delay) / 2 + root_disp + dispersion >= self.maxdist:
            return self._drop("distance")
        m = Measurement(offset, delay, dispersion, t1 + (t4 - t1) // 2, leap=p.leap)
        self.association.receive(
            m,
            t4,
            stratum=p.stratum,
            refid=p.refid,
            root_delay=root_delay,
            root_dispersion=root_disp,
            leap=p.leap,
            reference_ns=p.reference_ns(t1),
            precision=p.precision,
            ppoll=p.poll if p.poll else None,
            burst=self._answered,
        )
        self._answered = True
        self.stats.accepted += 1
        return ReplyResult(None, m)

    def _kiss(self, p: NtpPacket) -> ReplyResult:
        code = bytes(p.refid)
        name = code.rstrip(b"\0").decode("ascii", "replace")
        self.stats.kod_codes[name] = self.stats.kod_codes.get(name, 0) + 1
        self.stats.dropped["kod"] += 1
        if code == KISS_RATE:
            # Slow down: at least one step above our poll and no faster than the server asks.
            a = self.association
            new = min(MAXPOLL_LIMIT, max(a.poll + 1, p.poll, MINPOLL_LIMIT))
            a.minpoll = max(a.minpoll, new)
            a.maxpoll = max(a.maxpoll, a.minpoll)
            a.poll = max(a.poll, new)
            self.kod_rate += 1
            self._volley_left = 0
            self._volley_start_ns = self._t1_ns
            return ReplyResult("kod", kiss=code, reschedule_s=float(2**a.poll))
        if code in (KISS_DENY, KISS_RSTR):
            self.demobilized = name
            self._volley_left = 0
            return ReplyResult("kod", kiss=code, demobilize=True)
        # Other codes (INIT, STEP, ...) carry no instruction for us: the packet is just unusable.
        return ReplyResult("kod", kiss=code)

    def _drop(self, reason: str) -> ReplyResult:
        self.stats.dropped[reason] += 1
        return ReplyResult(reason)


__all__ = [
    "BURST_COUNT",
    "BURST_SPACING_S",
    "IBURST_COUNT",
    "REASONS",
    "REPLACE_UNREACH",
    "KeyAuth",
    "Peer",
    "PeerAuth",
    "PeerStats",
    "PollAction",
    "ReplyResult",
]
