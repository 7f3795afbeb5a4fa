"""One association per time source (a refclock unit or a network server/peer): reach, poll,
clock filter, the header values the source last announced, root distance and its tally code.

Sans-I/O: the caller hands in measurements and "now" (integer Unix ns); nothing here reads a
clock or a socket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections import deque

from .clockfilter import MAXDISPERSE, PHI, ClockFilter, FilterResult, Stage
from .ntptime import NS_PER_S
from .sample import LEAP_NOTINSYNC, Measurement

#: ntpq's tally characters, indexed by select code (flash3 " x.-+#*o").
TALLY = " x.-+#*o"
SEL_REJECT = 0  # ' ' unfit
SEL_FALSETICK = 1  # 'x' failed the intersection
SEL_EXCESS_UNUSED = 2  # '.' (ntpd never sets it)
SEL_OUTLIER = 3  # '-' truechimer cast out by clustering
SEL_CANDIDATE = 4  # '+' survivor, combined
SEL_BACKUP = 5  # '#' cast out while more than maxclock remained
SEL_SYSPEER = 6  # '*'
SEL_PPSPEER = 7  # 'o'

#: Peer event codes (mode-6 peer status word, low nibble).
EVNT_UNREACHABLE = 0x3
EVNT_REACHABLE = 0x4
EVNT_SYSPEER = 0xA
EVNT_POPCORN = 0xD

#: Polls without an answer before an unreachable network source's poll interval backs off.
NTP_UNREACH = 10
#: Refclock associations poll this often (s) for their first polls, then at 2**poll, so a
#: refclock is usable seconds after start, as a server with iburst is (the daemon and the
#: simulator both schedule by these).
STARTUP_POLL_S = 2
STARTUP_POLLS = 8
#: Valid poll exponents (RFC 5905 MINPOLL..MAXPOLL).
MINPOLL_LIMIT = 3
MAXPOLL_LIMIT = 17
#: Polls over which a refclock's sample spread is pooled.
SPREAD_POLLS = 8


def address_refid(address: str) -> bytes:
    """The reference id a server synchronised to ``address`` shows: the IPv4 address itself,
    or the first four octets of the MD5 hash of an IPv6 address (RFC 5905 section 7.3)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return ip.packed
    return hashlib.md5(ip.packed, usedforsecurity=False).digest()[:4]


def normalize_refid(refid: bytes | str) -> bytes:
    """Any refid spelling to exactly 4 bytes (ASCII, NUL padded)."""
    raw = refid.encode("ascii") if isinstance(refid, str) else bytes(refid)
    if len(raw) > 4:
        raise ValueError(f"refid {refid!r} is longer than 4 bytes")
    return raw.ljust(4, b"\0")


class Association:
    """The state of one source as ntpd keeps it in its peer structure.

    One of ``receive`` or ``poll_missed`` is called per poll; extra samples of a burst within
    the same poll go to ``receive(..., burst=True)``. The system process sets ``select_code``
    (and so ``tally``) and ``sys_poll``.
    """

    def __init__(
        self,
        assoc_id: int,
        name: str,
        *,
        refclock: bool,
        stratum: int = 0,
        refid: bytes | str = b"",
        precision: int = -20,
        minpoll: int = 6,
        maxpoll: int = 10,
        prefer: bool = False,
        noselect: bool = False,
        true: bool = False,
        pps: bool = False,
        local_clock: bool = False,
        address: str | None = None,
        sys_precision: int = -20,
        maxdist: float = 1.5,
    ) -> None:
        if not 0 < assoc_id < 65536:
            raise ValueError(f"association id {assoc_id} is outside 1..65535")
        if not MINPOLL_LIMIT <= minpoll <= maxpoll <= MAXPOLL_LIMIT:
            raise ValueError(
                f"{name}: need {MINPOLL_LIMIT} <= minpoll ({minpoll}) <= maxpoll ({maxpoll})"
                f" <= {MAXPOLL_LIMIT}"
            )
        if not 0 <= stratum <= 16:
            raise ValueError(f"{name}: stratum {stratum} is outside 0..16")
        if address is not None:
            ipaddress.ip_address(address)  # ValueError names the bad address
        self.assoc_id = assoc_id
        self.name = name
        self.refclock = refclock
        self.address = address
        self.prefer = prefer
        self.noselect = noselect
        self.true = true
        self.pps = pps
        #: The LOCAL driver: a fallback only, never a candidate unless it is ``prefer``.
        self.local_clock = local_clock
        self.minpoll = minpoll
        self.maxpoll = maxpoll
        self.sys_precision = sys_precision

        # What the source announces (for a refclock: its fudged stratum and refid).
        self.stratum = stratum
        self.refid = normalize_refid(refid)
        self.precision = precision
        self.leap = LEAP_NOTINSYNC
        self.root_delay = 0.0
        self.root_dispersion = 0.0
        self.reference_ns = 0  # the source's reference time (network) / last sample (refclock)

        self.reach = 0
        self.unreach = 0
        self.poll = minpoll  # host poll exponent (ntpq hpoll)
        self.ppoll = maxpoll  # the peer's poll exponent (ntpq ppoll)
        self.sys_poll = minpoll  # system poll, pushed by the system process
        self.is_system_peer = False
        self.select_code = SEL_REJECT
        #: Why the last selection found this source unfit (None: fit), for diagnostics.
        self.unfit_reason: str | None = "unreachable"

        self.filter = ClockFilter(precision_floor=2.0**sys_precision, maxdist=maxdist)
        self.rec_ns = 0  # local time of the last valid sample (ntpq rec)
        #: The spread of the samples a refclock averaged into its newest measurement (s).
        self.newest_jitter: float | None = None
        #: (spread, samples) of the last SPREAD_POLLS refclock polls (``sample_spread``).
        self._spreads: deque[tuple[float, float]] = deque(maxlen=SPREAD_POLLS)
        self.received = 0
        self.bad_samples = 0
        self.popcorn_spikes = 0
        self.last_event = 0
        self.event_count = 0

    # -- the statistics ntpq shows ------------------------------------------------------

    @property
    def sample_spread(self) -> float | None:
        """A refclock's sample spread (s): the median of its recent polls' spreads, weighted
        by their sample counts. One poll's spread of a few samples is a noisy estimate of the
        source's noise, and a poll whose window held a step or a slew would inflate an
        average for long. None before the first poll that gave one."""
        ranked = sorted(self._spreads)
        half = math.fsum(count for _, count in ranked) / 2
        total = 0.0
        for value, count in ranked:
            total += count
            if total >= half:
                return value
        return None

    @property
    def offset(self) -> float:
        return self.filter.offset

    @property
    def delay(self) -> float:
        return self.filter.delay

    @property
    def dispersion(self) -> float:
        return self.filter.dispersion

    @property
    def jitter(self) -> float:
        return self.filter.jitter

    @property
    def epoch_ns(self) -> int:
        """Local time of the sample the offset came from; 0 before the first one."""
        return self.filter.epoch_ns

    @property
    def sample_ns(self) -> int:
        """The instant (local clock) the sample behind ``offset`` measured."""
        return self.filter.sample_ns

    @property
    def sample_span_ns(self) -> int:
        """How long before ``sample_ns`` the samples averaged into ``offset`` began."""
        return self.filter.span_ns

    def newest_sample(self) -> Stage | None:
        """The newest real sample in the clock filter (whether or not the filter picked it)."""
        return self.filter.newest()

    @property
    def update_ns(self) -> int:
        """When the filter last ran (dispersion ages from here)."""
        return self.filter.update_ns

    @property
    def tally(self) -> str:
        return TALLY[self.select_code]

    @property
    def poll_interval(self) -> float:
        """Seconds until the next poll of this association."""
        return float(2**self.poll)

    def filter_stages(self) -> list[Stage]:
        """The eight filter stages, newest first (filtoffset/filtdelay/filtdisp)."""
        return self.filter.stages()

    # -- input ----------------------------------------------------------------------------

    def receive(
        self,
        m: Measurement,
        now_ns: int,
        *,
        stratum: int | None = None,
        refid: bytes | str | None = None,
        root_delay: float = 0.0,
        root_dispersion: float = 0.0,
        leap: int | None = None,
        reference_ns: int = 0,
        precision: int | None = None,
        ppoll: int | None = None,
        burst: bool = False,
        span_ns: int | None = None,
    ) -> FilterResult | None:
        """A valid sample arrived for this poll (network: with the packet's header values).

        ``span_ns``: for a refclock, how long before ``m.local_ns`` the samples averaged into
        ``m`` began (default: the measurement's own ``span_ns`` if it has one, else 0).

        Returns the clock filter's decision, or None when the input was malformed (counted in
        ``bad_samples`` and dropped) or a refclock reported itself unsynchronised.
        """
        values = (m.offset, m.delay, m.dispersion, root_delay, root_dispersion)
        if (
            not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
            or (m.dispersion < 0 or root_delay < 0 or root_dispersion < 0)
            or not isinstance(m.local_ns, int)
        ):
            self.bad_samples += 1
            return None
        if stratum is not None and not 0 <= stratum <= 16:
            self.bad_samples += 1
            return None
        if refid is not None:
            try:
                new_refid = normalize_refid(refid)
            except (ValueError, UnicodeEncodeError):
                self.bad_samples += 1
                return None
        lp = m.leap if leap is None else leap
        if lp not in (0, 1, 2, 3):
            self.bad_samples += 1
            return None

        self.leap = lp
        if self.refclock and lp == LEAP_NOTINSYNC:
            # A refclock that says it has no time gives no sample: the poll counts as missed.
            self.poll_missed(now_ns)
            return None

        if not burst:
            self._shift_reach(1)
        else:
            self._set_reach()
        self.unreach = 0
        if stratum is not None:
            self.stratum = stratum
        if refid is not None:
            self.refid = new_refid
        if precision is not None:
            self.precision = precision
        if ppoll is not None:
            self.ppoll = max(MINPOLL_LIMIT, min(MAXPOLL_LIMIT, ppoll))
        self.root_delay = float(root_delay)
        self.root_dispersion = float(root_dispersion)
        self.reference_ns = reference_ns if reference_ns else (m.local_ns if self.refclock else 0)
        self.rec_ns = now_ns
        self.received += 1

        delay = max(0.0, float(m.delay))
        if not self.refclock:
            # RFC 5905: a round trip can not be shorter than the clock can resolve.
            delay = max(delay, 2.0**self.sys_precision)
        dispersion = float(m.dispersion)
        if m.jitter is not None and math.isfinite(m.jitter):
            # ntpd hands a refclock's median-filter jitter to the clock filter as dispersion.
            dispersion = max(dispersion, float(m.jitter))
        if span_ns is None:
            span_ns = getattr(m, "span_ns", 0)
        span = span_ns if isinstance(span_ns, int) and span_ns > 0 else 0
        self.newest_jitter = (
            float(m.jitter) if m.jitter is not None and math.isfinite(m.jitter) else None
        )
        if self.newest_jitter is not None:
            # A refclock delivers about one sample a second: the window held span+1 of them.
            self._spreads.append((self.newest_jitter, 1.0 + span / NS_PER_S))
        result = self.filter.add(
            float(m.offset),
            delay,
            dispersion,
            now_ns,
            poll=self.poll,
            local_ns=m.local_ns,
            span_ns=span,
        )
        if result.popcorn:
            self.popcorn_spikes += 1
            self._event(EVNT_POPCORN)
        self._update_poll()
        return result

    def poll_missed(self, now_ns: int) -> None:
        """The poll came and went without a valid sample."""
        self._shift_reach(0)
        if self.reach == 0:
            self.unreach += 1
        # After 4 (refclock) / 3 (network) silent polls, push a dummy sample so the
        # dispersion grows and the source loses its grip on the selection.
        quiet_mask = 0x0F if self.refclock else 0x07
        if self.received and (self.reach & quiet_mask) == 0:
            self.filter.add(0.0, 0.0, MAXDISPERSE, now_ns, poll=self.poll)
        self._update_poll()

    def clear(self, now_ns: int, refid: bytes | str | None = None) -> None:
        """Forget the filter (after a clock step). Reach and configuration stay."""
        self.filter.clear(now_ns)
        if refid is not None and not self.refclock:
            self.refid = normalize_refid(refid)

    # -- derived --------------------------------------------------------------------------

    def root_distance(self, now_ns: int, mindist: float = 0.001) -> float:
        """Synchronisation distance to the primary source through this association (s).

        (delay + root delay)/2 + both precisions + peer dispersion aged at PHI + root
        dispersion + jitter, never below ``mindist`` (RFC 5905 with ntpd's precision terms).
        """
        age = max(0, now_ns - self.update_ns) / NS_PER_S if self.update_ns else 0.0
        dist = (
            (self.delay + self.root_delay) / 2
            + 2.0**self.precision
            + 2.0**self.sys_precision
            + self.dispersion
            + PHI * age
            + self.root_dispersion
            + self.jitter
        )
        return max(dist, mindist)

    def selection_distance(
        self, now_ns: int, mindist: float = 0.001, early_samples: int | None = None
    ) -> float:
        """The root distance the selection works with.

        ntpd's ``root_distance``, except that once the filter holds ``early_samples`` real
        samples (None: never), the stages that never held one are left out of the dispersion
        instead of counting 16 s each: that paper dispersion alone is what keeps a new source
        above ``maxdist`` (1.5 s) until its fourth sample. Dummy samples of missed polls
        still count in full. ``root_distance`` (ntpq's view, the served root dispersion) is
        unchanged.
        """
        dist = self.root_distance(now_ns, mindist)
        disp = self.selection_dispersion(early_samples)
        if disp == self.dispersion:
            return dist
        return max(mindist, dist - self.dispersion + disp)

    def selection_dispersion(self, early_samples: int | None = None) -> float:
        """The peer dispersion behind ``selection_distance`` (and the root dispersion a system
        synchronised to this source serves, so clients judge it as the selection did)."""
        if early_samples is None or self.filter.sample_count() < early_samples:
            return self.dispersion
        return self.filter.filled_dispersion

    def system_refid(self) -> bytes:
        """The refid a system synchronised to this source shows (RFC 5905 section 7.3)."""
        if self.refclock or self.stratum in (0, 16) or self.address is None:
            return self.refid
        return address_refid(self.address)

    def set_select_code(self, code: int) -> None:
        """Called by the system process after each selection."""
        was_sys = self.select_code in (SEL_SYSPEER, SEL_PPSPEER)
        self.select_code = code
        self.is_system_peer = code in (SEL_SYSPEER, SEL_PPSPEER)
        if self.is_system_peer and not was_sys:
            self._event(EVNT_SYSPEER)
        self._update_poll()

    # -- internals ------------------------------------------------------------------------

    def _shift_reach(self, bit: int) -> None:
        before = self.reach
        self.reach = ((self.reach << 1) | bit) & 0xFF
        if before == 0 and self.reach:
            self._event(EVNT_REACHABLE)
        elif before and self.reach == 0:
            self._event(EVNT_UNREACHABLE)

    def _set_reach(self) -> None:
        before = self.reach
        self.reach |= 1
        if before == 0:
            self._event(EVNT_REACHABLE)

    def _update_poll(self) -> None:
        if self.reach == 0:
            # Unreachable: keep trying at the current rate for a while, then back off.
            poll = self.poll + 1 if self.unreach >= NTP_UNREACH else self.poll
        elif self.refclock and not self.is_system_peer:
            poll = self.minpoll
        else:
            poll = self.sys_poll
        self.poll = max(self.minpoll, min(self.maxpoll, poll))

    def _event(self, code: int) -> None:
        # The mode-6 event counter saturates at 15 and restarts when the code changes.
        if code == self.last_event:
            self.event_count = min(15, self.event_count + 1)
        else:
            self.last_event = code
            self.event_count = 1
