"""The system process: ties the associations, selection, mitigation and the clock discipline
together and publishes an immutable ``SystemSnapshot`` after every update.

Sans-I/O: ``update(now_ns)`` is called after each new sample (and periodically, so orphan mode
and fallbacks can take over); it never reads a clock or a socket.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .association import (
    SEL_REJECT,
    Association,
    normalize_refid,
)
from .clockfilter import MAXDISPERSE, PHI, Stage
from .mitigation import PPS_GATE, Mitigated, mitigate
from .ntptime import NS_PER_S
from .orphan import orphan_parent_snapshot, pick_orphan_parent
from .sample import LEAP_NOTINSYNC
from .select import Candidate, ClockHop, Tos, select_sources
from .snapshot import STRATUM_UNSYNC, SystemSnapshot

#: Refid shown after the clock was stepped, until the next update (as ntpd).
STEP_REFID = b"STEP"
#: Share of the peer jitter taken as a network sample's error when its delay is the minimum.
NET_SIGMA_FLOOR = 0.5
#: Real samples a source needs before the selection leaves its never-filled filter stages out
#: of its distance (chrony's minimum for a regression; ntpd's 16 s per empty stage holds a new
#: source until its fourth sample). A source with fewer is judged as ntpd judges it.
EARLY_SELECT_SAMPLES = 3


class DisciplineResultLike(Protocol):
    action: str  # "ignore" | "slew" | "step" | "panic"
    poll: int


class DisciplineLike(Protocol):
    """What the system process needs from ``stratum1.discipline.Discipline``."""

    def update(
        self, offset: float, jitter: float, now_ns: int, *, poll: int, **kwargs: Any
    ) -> DisciplineResultLike: ...


#: Precision assumed when a clock never advances while it is read (a virtual clock).
DEFAULT_PRECISION = -20
_PRECISION_READS = 100_000
_PRECISION_STEPS = 32


def measure_precision(readings: Sequence[int] | Callable[[], int]) -> int:
    """System precision (log2 s) from successive clock readings (integer ns).

    The smallest positive step between successive readings bounds both the clock's
    resolution and the time it takes to read it; the precision is the smallest power of two
    not below it. Given a sequence, raises ValueError when the readings never advance. Given
    a reading function (``clock.now_ns``), reads it until 32 steps were seen (at most 100000
    reads) and returns DEFAULT_PRECISION for a clock that never advanced (virtual time).
    """
    if callable(readings):
        read = readings
        values = [read()]
        steps = 0
        for _ in range(_PRECISION_READS):
            values.append(read())
            if values[-1] > values[-2]:
                steps += 1
                if steps >= _PRECISION_STEPS:
                    break
        if steps == 0:
            return DEFAULT_PRECISION
        return measure_precision(values)
    steps_ns = [b - a for a, b in zip(readings, readings[1:], strict=False) if b > a]
    if not steps_ns:
        raise ValueError("precision: the clock readings never advanced")
    tick = min(steps_ns) / NS_PER_S
    return max(-30, min(0, math.ceil(math.log2(tick))))


def coerce_tos(tos: object | None) -> Tos:
    """A ``Tos`` from None (defaults), a ``Tos``, or any object with the same attributes
    (``stratum1.config.model.Tos``)."""
    if tos is None:
        return Tos()
    if isinstance(tos, Tos):
        return tos
    names = (
        "minsane",
        "minclock",
        "maxclock",
        "mindist",
        "maxdist",
        "floor",
        "ceiling",
        "orphan",
        "orphanwait",
    )
    return Tos(**{n: getattr(tos, n) for n in names if hasattr(tos, n)})


class SystemProcess:
    """Owns the associations and the system variables.

    ``local_refids``: refids this host's own addresses produce (TEST12 loop detection);
    ``local_address``: this host's address, used to break ties between orphan parents.
    """

    def __init__(
        self,
        *,
        tos: object | None = None,
        precision: int,
        discipline: DisciplineLike | None,
        local_refids: Iterable[bytes] = (),
        local_address: str | None = None,
        pps_gate: float = PPS_GATE,
        poll: int = 6,
        start_ns: int | None = None,
        early_samples: int | None = EARLY_SELECT_SAMPLES,
    ) -> None:
        if early_samples is not None and early_samples < 2:
            raise ValueError("early_samples must be at least 2 (or None for ntpd's rule)")
        self.early_samples = early_samples
        self.tos = coerce_tos(tos)
        self.precision = precision
        self.discipline = discipline
        self.local_refids = {normalize_refid(r) for r in local_refids}
        self.local_address = local_address
        self.pps_gate = pps_gate
        self.sys_poll = poll
        self._assocs: dict[int, Association] = {}
        self._clockhop = ClockHop()
        self._sys_epoch_ns = 0
        self._start_ns = start_ns
        self._orphwait_ns = None if start_ns is None else start_ns + self._orphanwait_ns()
        self.system_peer: Association | None = None
        self.pps_peer: Association | None = None
        self.leap_vote = 0
        self.last_selection: Mitigated | None = None
        self.last_action: str | None = None
        self.panic = False  # the discipline refused an offset beyond the panic threshold
        self.orphan_parent = False
        self.snapshot = SystemSnapshot(precision=precision, poll=poll)

    # -- associations ---------------------------------------------------------------------

    @property
    def associations(self) -> list[Association]:
        """All associations, by id."""
        return [self._assocs[k] for k in sorted(self._assocs)]

    def get(self, assoc_id: int) -> Association | None:
        return self._assocs.get(assoc_id)

    def add(self, a: Association) -> None:
        if a.assoc_id in self._assocs:
            raise ValueError(f"association id {a.assoc_id} is already in use")
        a.sys_precision = self.precision
        a.filter.precision_floor = 2.0**self.precision
        a.filter.maxdist = self.tos.maxdist
        a.sys_poll = self.sys_poll
        self._assocs[a.assoc_id] = a

    def remove(self, assoc_id: int) -> None:
        a = self._assocs.pop(assoc_id, None)
        if a is None:
            raise KeyError(f"no association {assoc_id}")
        if a is self.system_peer:
            self.system_peer = None
        if a is self.pps_peer:
            self.pps_peer = None

    # -- fitness ----------------------------------------------------------------------------

    def unfit_reason(self, a: Association, now_ns: int) -> str | None:
        """Why ``a`` can not be a candidate now (ntpd's peer_unfit tests), or None."""
        tos = self.tos
        if a.noselect:
            return "noselect"
        if a.reach == 0 or a.epoch_ns == 0:
            return "unreachable"
        if a.pps and not a.reach & 1:
            # A PPS offset is only good while pulses arrive: without this, a silent PPS
            # would stay the PPS peer on its last offset until reach ran out (eight polls),
            # and nothing would discipline the clock meanwhile.
            return "no pulses"
        if a.leap == LEAP_NOTINSYNC:
            return "unsynchronized"
        # The floor is not applied to refclocks: they sit at stratum 0 by nature.
        if (not a.refclock and a.stratum < tos.floor) or a.stratum >= tos.ceiling:
            return "stratum"
        # Refclocks too: a unit whose filter holds one sample is ~8 s from the truth on paper,
        # and a server that answered "synchronised" then would be refused by every client.
        if self._distance(a, now_ns) >= tos.maxdist + PHI * 2**a.poll:
            return "distance"
        if not a.refclock and a.stratum > 1 and a.refid in self.local_refids:
            return "loop"
        return None

    def _distance(self, a: Association, now_ns: int) -> float:
        return a.selection_distance(now_ns, self.tos.mindist, self.early_samples)

    def correction_since(self, local_ns: int, now_ns: int) -> float:
        """How far (s) an offset measured at ``local_ns`` has moved by ``now_ns`` through the
        discipline's corrections (net of the oscillator drift they cancel).

        An offset measured at ``local_ns`` minus this is what the source would show now: the
        clock filter's pick can be several polls old, and after the first corrections (10 ms
        at start) such an old offset would say the clock is still off by all of it.
        """
        change = getattr(self.discipline, "offset_change", None)
        if change is None or local_ns <= 0 or local_ns >= now_ns:
            return 0.0
        return float(change(local_ns, now_ns))

    def current_offset(self, a: Association, now_ns: int) -> float:
        """The association's clock-filter offset, less the corrections made since."""
        t = a.sample_ns - a.sample_span_ns // 2 if a.sample_ns else 0
        return a.offset - self.correction_since(t, now_ns)

    def _candidate(self, a: Association, now_ns: int) -> Candidate:
        return Candidate(
            key=a.assoc_id,
            offset=self.current_offset(a, now_ns),
            distance=self._distance(a, now_ns),
            jitter=a.jitter,
            stratum=a.stratum,
            prefer=a.prefer,
            true=a.true,
            pps=a.pps,
            refclock=a.refclock,
            leap=a.leap,
        )

    # -- the system process -----------------------------------------------------------------

    def update(self, now_ns: int) -> SystemSnapshot:
        """Run selection and mitigation; discipline the clock when the chosen source has a
        sample newer than the last one used; publish and return the snapshot."""
        if self._start_ns is None:
            self._start_ns = now_ns
            self._orphwait_ns = now_ns + self._orphanwait_ns()
        tos = self.tos
        orphan_on = tos.orphan < STRATUM_UNSYNC
        codes: dict[int, int] = {}
        candidates: list[Candidate] = []
        local_fallback: Association | None = None
        orphan_sources: list[Association] = []
        past_wait = self._orphwait_ns is not None and now_ns >= self._orphwait_ns
        # LOCAL waits out orphanwait so it never beats real sources that are still warming up;
        # when it is the only kind of source configured there is nothing to wait for.
        local_only = all(a.local_clock for a in self.associations)
        for a in self.associations:
            codes[a.assoc_id] = SEL_REJECT
            reason = self.unfit_reason(a, now_ns)
            if reason is None and orphan_on and a.stratum > tos.orphan:
                reason = "orphan"  # could have this host's orphan parent as an ancestor
            a.unfit_reason = reason
            if reason is not None:
                continue
            if orphan_on and a.stratum == tos.orphan:
                orphan_sources.append(a)
                continue
            if a.local_clock and not a.prefer:
                if (past_wait or local_only) and local_fallback is None:
                    local_fallback = a
                continue
            candidates.append(self._candidate(a, now_ns))

        fallback_assoc = local_fallback or pick_orphan_parent(orphan_sources, self.local_address)
        fallback = None
        if fallback_assoc is not None:
            c = self._candidate(fallback_assoc, now_ns)
            fallback = Candidate(
                c.key,
                c.offset,
                tos.mindist,
                0.0,
                c.stratum,
                c.prefer,
                c.true,
                c.pps,
                c.refclock,
                c.leap,
            )
        current = self.system_peer.assoc_id if self.system_peer is not None else None
        sel = select_sources(
            candidates, tos, current=current, clockhop=self._clockhop, fallback=fallback
        )
        mit = mitigate(
            sel,
            minsane=tos.minsane,
            was_synchronized=self.snapshot.synchronized,
            pps_gate=self.pps_gate,
            clockhop=self._clockhop,
        )
        codes.update(mit.selection.codes)  # type: ignore[arg-type]
        self.last_selection = mit
        self.leap_vote = sel.leap

        peer = self._assocs.get(mit.system_peer_key) if mit.system_peer_key is not None else None
        if peer is None:
            if self.system_peer is not None:
                self._orphwait_ns = now_ns + self._orphanwait_ns()
            self.system_peer = None
            self.pps_peer = None
            self._commit(codes)
            if orphan_on and self._orphwait_ns is not None and now_ns >= self._orphwait_ns:
                self.orphan_parent = True
                self.snapshot = orphan_parent_snapshot(
                    orphan_stratum=tos.orphan,
                    precision=self.precision,
                    poll=self.sys_poll,
                    now_ns=now_ns,
                )
            return self.snapshot
        newest = peer.newest_sample()
        if newest is None or newest.epoch_ns <= self._sys_epoch_ns or peer.filter.last_popcorn:
            # Nothing new from the chosen source (or its newest sample was a popcorn spike):
            # keep the last statistics and tallies.
            return self.snapshot

        self._commit(codes)
        self.orphan_parent = False
        first = self._sys_epoch_ns == 0
        self._sys_epoch_ns = newest.epoch_ns
        self.system_peer = peer
        self.pps_peer = peer if mit.pps_active else None
        offset, sigma, sample_ns, span_ns = self._measurement(peer, newest, mit, now_ns)
        if mit.pps_active or peer.prefer:
            jitter = peer.jitter  # the selection took this peer's own jitter
        else:
            # ntpd's system jitter: the peer's own jitter and the selection jitter together
            # (with one survivor the selection jitter alone would be 0).
            jitter = math.hypot(peer.jitter, mit.selection.jitter)

        if self.discipline is not None:
            if first:
                self._feed_history(peer, newest, mit, now_ns)
            result = self.discipline.update(
                offset,
                sigma,
                now_ns,
                poll=self.sys_poll,
                sample_ns=sample_ns or None,
                span_ns=span_ns,
                delay=newest.delay if not peer.refclock else None,
            )
            self.last_action = result.action
            poll = getattr(result, "poll", None)
            if isinstance(poll, int):
                self.sys_poll = poll
                for a in self._assocs.values():
                    a.sys_poll = poll
            if result.action == "ignore":
                return self.snapshot
            if result.action == "panic":
                self.panic = True
                return self.snapshot
            if result.action == "step":
                return self._stepped(now_ns)
        else:
            self.last_action = None

        self.snapshot = self._clock_update(peer, offset, jitter, sel.leap, now_ns)
        return self.snapshot

    # -- internals ------------------------------------------------------------------------

    def _measurement(
        self, peer: Association, newest: Stage, mit: Mitigated, now_ns: int
    ) -> tuple[float, float, int, int]:
        """What the discipline gets: (offset, its expected error, sample time, window span).

        The system peer's newest sample, shifted by how far the combined offset lies from
        that peer's own (0 for a lone survivor, a PPS or a prefer peer), so each sample counts
        once and the combining still averages the survivors' biases. The expected error is
        the sample's own: a refclock poll's spread over the square root of the samples it
        averaged; a network exchange's excess delay over the filter's minimum, halved (the
        most queueing can bias the offset), on top of the peer jitter.
        """
        shift = mit.selection.offset - self.current_offset(peer, now_ns)
        offset = newest.offset + shift
        if peer.refclock:
            spread = peer.sample_spread
            if spread is None:
                spread = peer.jitter
            # Refclocks deliver about one sample a second: the window held span+1 of them.
            count = 1.0 + newest.span_ns / NS_PER_S
            sigma = spread / math.sqrt(count)
        else:
            excess = max(0.0, newest.delay - peer.filter.min_delay()) / 2.0
            sigma = math.hypot(excess, NET_SIGMA_FLOOR * self._net_jitter(peer, now_ns))
        if not (mit.pps_active or peer.prefer):
            sigma = math.hypot(sigma, mit.selection.jitter)
        return offset, sigma, newest.local_ns, newest.span_ns

    def _feed_history(
        self, peer: Association, newest: Stage, mit: Mitigated, now_ns: int
    ) -> None:
        """The first update since start (or a step): hand the loop the system peer's older
        samples too, oldest first, so its first correction already knows the frequency
        (chrony's regression starts from every sample the source has given)."""
        add = getattr(self.discipline, "add_history", None)
        if add is None:
            return
        older = [
            s
            for s in peer.filter_stages()
            if s.epoch_ns and s.dispersion < MAXDISPERSE and s.epoch_ns < newest.epoch_ns
        ]
        for stage in sorted(older, key=lambda s: s.epoch_ns):
            offset, sigma, sample_ns, span_ns = self._measurement(peer, stage, mit, now_ns)
            add(offset, sigma, sample_ns, span_ns=span_ns)

    def _net_jitter(self, peer: Association, now_ns: int) -> float:
        """The peer jitter with each stage's offset taken net of the corrections made since it
        was measured: the filter's own jitter (ntpq's) mixes offsets from before and after a
        correction, and right after the first 10 ms slew it would say milliseconds."""
        stages = [s for s in peer.filter_stages() if s.epoch_ns and s.dispersion < MAXDISPERSE]
        if len(stages) < 2:
            return peer.jitter
        best = min(stages, key=lambda s: s.delay)
        ref = best.offset - self.correction_since(best.local_ns, now_ns)
        sq = math.fsum(
            (s.offset - self.correction_since(s.local_ns, now_ns) - ref) ** 2 for s in stages
        )
        return max(math.sqrt(sq / (len(stages) - 1)), peer.filter.precision_floor)

    def _orphanwait_ns(self) -> int:
        return int(self.tos.orphanwait * NS_PER_S)

    def _commit(self, codes: dict[int, int]) -> None:
        for assoc_id, code in codes.items():
            a = self._assocs.get(assoc_id)
            if a is not None:
                a.set_select_code(code)

    def _clock_update(
        self, peer: Association, offset: float, jitter: float, leap: int, now_ns: int
    ) -> SystemSnapshot:
        age = max(0, now_ns - peer.update_ns) / NS_PER_S
        root_disp = max(
            self.tos.mindist,
            peer.root_dispersion
            + peer.selection_dispersion(self.early_samples)
            + jitter
            + PHI * age
            + abs(offset),
        )
        return SystemSnapshot(
            leap=leap,
            stratum=min(STRATUM_UNSYNC, peer.stratum + 1),
            precision=self.precision,
            poll=self.sys_poll,
            root_delay=peer.delay + peer.root_delay,
            root_dispersion=root_disp,
            refid=peer.system_refid(),
            reference_ns=peer.update_ns,
            offset=offset,
            jitter=jitter,
            system_peer_id=peer.assoc_id,
        )

    def _stepped(self, now_ns: int) -> SystemSnapshot:
        # Offsets measured before a step are meaningless after it: start every filter afresh
        # and stay unsynchronised until the next update, as ntpd does.
        for a in self._assocs.values():
            a.clear(now_ns, refid=STEP_REFID)
        self._sys_epoch_ns = 0
        self.system_peer = None
        self.pps_peer = None
        self._clockhop.threshold = 0.0
        self.snapshot = SystemSnapshot(
            precision=self.precision, poll=self.sys_poll, refid=STEP_REFID
        )
        return self.snapshot
