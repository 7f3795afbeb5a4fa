"""The per-client MRU list and ntpd's rate limits (``discard average minimum monitor``).

Bounded in entries (``mru maxdepth``/``maxmem``), aged out (``mru maxage``); each entry keeps
what ``ntpq -c mrulist`` shows. Times are whatever integer ns clock the caller passes.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .config.model import Discard, Mru

try:  # the compiled steady state of observe_run (stratum1/_hotpath.c); the same without it
    from ._hotpath import observe_runs as _compiled_observe_runs
except ImportError:  # pragma: no cover - depends on how the package was built
    _compiled_observe_runs = None

NS = 1_000_000_000
_HALF = NS // 2
#: ntpd's NTP_SHIFT: the average headway budget is this many increments.
NTP_SHIFT = 8
#: What one entry costs here (object, key string, dict slot): turns ``mru maxmem`` (KiB) into
#: a count.
ENTRY_BYTES = 256
#: ntpd's defaults: 600 entries kept regardless of age; entries idle longer than 64 s reclaimed
#: once the list is past that; 1 MiB at most.
DEFAULT_MINDEPTH = 600
DEFAULT_MAXAGE = 64
DEFAULT_MAXMEM_KIB = 1024
#: ntpd's RES_LIMITED and RES_KOD bits (``stratum1.restrict.Flag``; kept here as plain ints so
#: this module stands alone).
LIMITED = 0x0020
KOD = 0x0400
_DOUSE = ~(LIMITED | KOD) & 0xFFFF
_MODE_CLIENT = 3
_MODE_CONTROL = 6


class MruEntry:
    """One remote address: what ``ntpq -c mrulist`` lists, plus the rate-limit state.

    ``flags`` are the restrict flags of the last packet with LIMITED/KOD left on only if that
    packet was rate limited (ntpd's ``rs`` field). ``restrict_flags``/``generation``/
    ``from_ntp_port`` cache the table lookup for this address.
    """

    __slots__ = ("address", "port", "first_ns", "last_ns", "count", "flags", "mode", "version",
                 "leak", "restrict_flags", "generation", "from_ntp_port", "family", "value")  # fmt: skip

    def __init__(self, address: str, port: int, now_ns: int, mode: int, version: int,
                 restrict_flags: int, generation: int, family: int, value: int) -> None:  # fmt: skip
        self.address = address
        self.port = port
        self.first_ns = now_ns
        self.last_ns = now_ns
        self.count = 1
        self.flags = restrict_flags & _DOUSE
        self.mode = mode
        self.version = version
        self.leak = 0  # seconds of headway budget used (ntpd's mon->leak)
        self.restrict_flags = restrict_flags
        self.generation = generation
        self.from_ntp_port = port == 123  # the port the cached restrict_flags were looked up for
        self.family = family
        self.value = value

    def average_interval(self) -> float:
        """Mean seconds between packets (``avgint``); 0 with a single packet."""
        if self.count < 2:
            return 0.0
        return (self.last_ns - self.first_ns) / NS / (self.count - 1)

    def __repr__(self) -> str:
        return (f"MruEntry({self.address}:{self.port} count={self.count} mode={self.mode} "
                f"v{self.version} flags={self.flags:#x} leak={self.leak})")  # fmt: skip


@dataclass(frozen=True, slots=True)
class MruLimits:
    """The list's bounds (``mru`` directive, ntpd defaults), and ``discard`` parameters."""

    mindepth: int = DEFAULT_MINDEPTH
    maxdepth: int = DEFAULT_MAXMEM_KIB * 1024 // ENTRY_BYTES
    maxage: int = DEFAULT_MAXAGE  # s; -1: never recycle by age
    minage: int | None = None  # s; ntpsec: never preempt entries younger than this
    average: int = 3  # log2 s: minimum average headway increment
    minimum: int = 2  # s: minimum headway (guard time)
    monitor: int = 3000  # s: preemption scale of a full list (ntpd's mon_age)

    @classmethod
    def from_config(cls, mru: Mru | None = None, discard: Discard | None = None) -> MruLimits:
        mru = mru or Mru()
        discard = discard or Discard()
        maxdepth = DEFAULT_MAXMEM_KIB * 1024 // ENTRY_BYTES
        candidates = []
        if mru.maxdepth is not None:
            candidates.append(mru.maxdepth)
        if mru.maxmem is not None:
            candidates.append(mru.maxmem * 1024 // ENTRY_BYTES)
        if candidates:
            # ntpd lets the later of maxdepth/maxmem win; the model keeps both, so take the
            # tighter bound (memory stays bounded either way).
            maxdepth = min(candidates)
        mindepth = DEFAULT_MINDEPTH if mru.mindepth is None else mru.mindepth
        return cls(
            mindepth=min(mindepth, maxdepth),
            maxdepth=max(1, maxdepth),
            maxage=DEFAULT_MAXAGE if mru.maxage is None else mru.maxage,
            minage=mru.minage,
            average=discard.average,
            minimum=discard.minimum,
            monitor=max(1, discard.monitor),
        )


@dataclass(slots=True)
class MruStats:
    """Counters of the list (ntpq's ``monstats``)."""

    new: int = 0  # entries added
    recycled_old: int = 0  # oldest entry reused because it was older than maxage
    recycled_full: int = 0  # oldest entry preempted because the list was full
    not_recorded: int = 0  # list full and the oldest too young: address not recorded
    expired: int = 0  # entries removed by ``expire``
    limited: int = 0  # packets over the rate limits
    peak: int = 0  # highest number of entries seen


class RateLimiter:
    """The MRU list with ntpd's rate control.

    ``observe`` records one packet and returns the restrict flags it gets: LIMITED and KOD are
    cleared unless the packet broke the limits (LIMITED) and a KoD may be sent (KOD, at most
    once per average headway). Control (mode 6) packets are recorded but do not use up the
    address's time-service budget.
    """

    def __init__(self, limits: MruLimits | None = None, *,
                 rng: Callable[[], float] = random.random, compiled: bool = True) -> None:  # fmt: skip
        """``compiled``: let ``observe_current_runs`` use the compiled loop where it is built
        (off: Python does it all, as tests compare)."""
        self.limits = limits or MruLimits()
        self._observe_runs = _compiled_observe_runs if compiled else None
        self._rng = rng
        self._entries: OrderedDict[str, MruEntry] = OrderedDict()
        #: The entry of an address, or None (the dict's own lookup: no Python frame per call).
        self.get: Callable[[str], MruEntry | None] = self._entries.get
        self.stats = MruStats()
        self._head = 1 << self.limits.average
        self._limit = NTP_SHIFT * self._head
        self._minimum = self.limits.minimum

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[MruEntry]:
        """Most recent first (the order ``ntpq -c mrulist`` asks for is its own business)."""
        return reversed(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def observe(self, address: str, port: int, mode: int, version: int, now_ns: int,
                restrict_flags: int, generation: int = 0, family: int = 0,
                value: int = 0, entry: MruEntry | None = None) -> int:  # fmt: skip
        """Record a packet from ``address`` (its entry, if the caller already has it, saves a
        lookup) and return its flags after rate control (ntpd's ``ntp_monitor``)."""
        if entry is None:
            entry = self._entries.get(address)
        if entry is None:
            return self.insert(address, port, mode, version, now_ns, restrict_flags,
                                generation, family, value)  # fmt: skip
        # Rounded to whole seconds like ntpd; a clock stepped backwards counts as no headway.
        # (Conditionals, not max(): this runs once per client request.)
        interval = (now_ns - entry.last_ns + _HALF) // NS
        if interval < 0:
            interval = 0
        entry.last_ns = now_ns
        entry.port = port
        entry.count += 1
        entry.mode = mode
        entry.version = version
        self._entries.move_to_end(address)
        if mode == _MODE_CONTROL:
            entry.flags = restrict_flags & _DOUSE
            return entry.flags
        leak = entry.leak - interval
        if leak < 0:
            leak = 0
        head = self._head
        limit = self._limit
        # ntpd's rule: the minimum headway (1 s grace) and the leaky-bucket average (2 s grace
        # per packet). Over either, the bucket is topped up past the limit once and a KoD is
        # allowed; while it drains, further packets are dropped without a KoD.
        if interval + 1 >= self._minimum and leak + head < limit:
            entry.leak = leak + head - 2
            flags = restrict_flags & _DOUSE
        elif leak < limit:
            entry.leak = limit + head
            flags = restrict_flags
            self.stats.limited += 1
        else:
            entry.leak = leak
            flags = restrict_flags & ~KOD
            self.stats.limited += 1
        entry.flags = flags
        return flags

    def observe_run(self, entry: MruEntry, port: int, versions: Sequence[int],
                    times: Sequence[int], start: int, stop: int, restrict_flags: int,
                    limited_out: list[tuple[int, int]] | None = None) -> None:  # fmt: skip
        """``observe`` for the time requests (mode 3) ``start``..``stop - 1`` of a batch, all
        from ``entry``'s address and ``port``, received at ``times[k]`` with ``versions[k]``.

        Exactly what that many ``observe`` calls in a row would do (same entry state, order
        and counters), in one loop over plain ints. Each packet over the limits is appended
        to ``limited_out`` (when given) as (k, its flags)."""
        if stop - start == 1:
            # One packet (many clients, one request each): the one-packet update is cheaper
            # than setting up the run loop.
            before = self.stats.limited
            flags = self.observe(entry.address, port, _MODE_CLIENT, versions[start],
                                 times[start], restrict_flags, entry=entry)  # fmt: skip
            if limited_out is not None and self.stats.limited != before:
                limited_out.append((start, flags))
            return
        if stop <= start:
            return
        last = entry.last_ns
        leak = entry.leak
        head = self._head
        limit = self._limit
        minimum = self.limits.minimum
        douse = restrict_flags & _DOUSE
        nokod = restrict_flags & ~KOD
        flags = entry.flags
        limited = 0
        run = times[start:stop]
        if minimum >= 2 and max(last, *run) - min(last, *run) < _HALF:
            # A flood: every interval rounds to 0 s, under the minimum headway, so each
            # packet is over the limits; the first tops the bucket up (KoD allowed) unless
            # it is already full, and the rest find it full (no KoD). Same as the loop below.
            if leak < 0:
                leak = 0
            flags = nokod
            if leak < limit:
                leak = limit + head
                flags = restrict_flags
            if limited_out is not None:
                limited_out.append((start, flags))
                limited_out.extend((k, nokod) for k in range(start + 1, stop))
            if stop - start > 1:
                flags = nokod
            last = run[-1]
            limited = stop - start
            run = ()
        for k in range(start, stop) if run else ():
            now = times[k]
            # Rounded to whole seconds like ntpd; a clock stepped backwards is no headway.
            interval = (now - last + _HALF) // NS
            if interval < 0:
                interval = 0
            last = now
            leak -= interval
            if leak < 0:
                leak = 0
            if interval + 1 >= minimum and leak + head < limit:
                leak += head - 2
                flags = douse
                continue
            if leak < limit:
                leak = limit + head
                flags = restrict_flags
            else:
                flags = nokod
            limited += 1
            if limited_out is not None:
                limited_out.append((k, flags))
        entry.last_ns = last
        entry.leak = leak
        entry.flags = flags
        entry.port = port
        entry.count += stop - start
        entry.mode = _MODE_CLIENT
        entry.version = versions[stop - 1]
        self._entries.move_to_end(entry.address)
        self.stats.limited += limited

    def observe_current_runs(self, addresses: list[tuple], starts: list[int],
                             versions: list[int], times: list[int], generation: int,
                             ntpport: bool, defer: int) -> tuple[int, int, int, list]:  # fmt: skip
        """``observe_run`` for the runs of a batch of time requests (as
        ``AccessControl.check_clients`` takes them), from the first for as long as each run
        is of versions 1-4 and its address has an entry whose cached restrict flags are
        current (looked up in table ``generation``, and for the run's port-123-ness when the
        table has ``ntpport`` entries) and hold none of the ``defer`` bits; the rest is the
        caller's.

        Returns (runs done, requests in them, the last entry's flags or -1, [(k, flags)] for
        each request over the limits in runs whose flags have LIMITED). Done by the compiled
        loop; without it, nothing is done here (0 runs)."""
        fast = self._observe_runs
        if fast is None or not all(type(x) is list for x in (addresses, starts, versions, times)):
            return 0, 0, -1, []  # the compiled loop reads lists only
        done, checked, over, last, limited = fast(
            addresses, starts, versions, times, *self.compiled_args(generation, ntpport, defer))
        self.stats.limited += over
        return done, checked, last, limited

    def compiled_args(self, generation: int, ntpport: bool, defer: int) -> tuple:
        """The list and limits as the compiled loops (``_hotpath.observe_runs`` and
        ``serve_known``) take them: entries, their ``move_to_end``, then ``generation``,
        ``ntpport``, head, limit, minimum, ``defer``, and the LIMITED, KOD and douse bits."""
        entries = self._entries
        return (entries, entries.move_to_end, generation, ntpport, self._head, self._limit,
                self._minimum, defer, LIMITED, KOD, _DOUSE)  # fmt: skip

    @property
    def compiled(self) -> bool:
        """Whether the compiled loops serve this list."""
        return self._observe_runs is not None

    def insert(self, address: str, port: int, mode: int, version: int, now_ns: int,
               restrict_flags: int, generation: int, family: int, value: int) -> int:  # fmt: skip
        """``observe`` for an address the list does not hold (the caller has looked): record
        it if the list's bounds allow, and return its flags (never over a limit)."""
        entries = self._entries
        limits = self.limits
        if len(entries) >= limits.mindepth and entries:
            oldest = next(iter(entries.values()))
            oldest_key = oldest.address
            oldest_age = (now_ns - oldest.last_ns + _HALF) // NS
            if limits.maxage >= 0 and oldest_age > limits.maxage:
                del entries[oldest_key]
                self.stats.recycled_old += 1
            elif len(entries) < limits.maxdepth:
                pass
            elif limits.minage is not None and oldest_age < limits.minage:
                self.stats.not_recorded += 1
                return restrict_flags & _DOUSE
            elif limits.minage is None and self._rng() > oldest_age / limits.monitor:
                # ntpd: a full list preempts its oldest entry with probability age/monitor.
                self.stats.not_recorded += 1
                return restrict_flags & _DOUSE
            else:
                del entries[oldest_key]
                self.stats.recycled_full += 1
        entry = MruEntry(address, port, now_ns, mode, version, restrict_flags, generation,
                         family, value)  # fmt: skip
        entries[address] = entry
        self.stats.new += 1
        if len(entries) > self.stats.peak:
            self.stats.peak = len(entries)
        return entry.flags

    def expire(self, now_ns: int, budget: int = 1000) -> int:
        """Drop entries idle longer than ``maxage`` while the list is above ``mindepth`` (at most
        ``budget`` per call, so a timer can call it without stalling the loop)."""
        limits = self.limits
        if limits.maxage < 0:
            return 0
        entries = self._entries
        removed = 0
        while removed < budget and len(entries) > limits.mindepth:
            key = next(iter(entries))
            if (now_ns - entries[key].last_ns + _HALF) // NS <= limits.maxage:
                break
            del entries[key]
            removed += 1
        self.stats.expired += removed
        return removed

    def oldest_age(self, now_ns: int) -> int:
        """Seconds since the least recently seen address (0 if empty)."""
        if not self._entries:
            return 0
        oldest = next(iter(self._entries.values()))
        return max(0, (now_ns - oldest.last_ns + _HALF) // NS)


__all__ = [
    "ENTRY_BYTES",
    "KOD",
    "LIMITED",
    "MruEntry",
    "MruLimits",
    "MruStats",
    "RateLimiter",
]
