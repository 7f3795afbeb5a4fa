"""The 8-stage NTP clock filter of one association (RFC 5905 section 10, ntpd's clock_filter).

Keeps the last eight (offset, delay, dispersion) samples, ages their dispersion at PHI, picks the
minimum-distance sample, computes the peer dispersion and jitter and suppresses popcorn spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ntptime import NS_PER_S

#: Stages in the filter shift register.
NTP_SHIFT = 8
#: Frequency tolerance: dispersion grows at 15 PPM of elapsed time.
PHI = 15e-6
#: Dispersion of an empty stage or a dummy sample, and the distance ceiling (s).
MAXDISPERSE = 16.0
#: Popcorn-spike gate, in multiples of the peer jitter.
CLOCK_SGATE = 3.0
#: Samples older than the Allan intercept (2^11 s) are ranked by delay + dispersion.
ALLAN_INTERCEPT_S = 2**11
#: Weight of successive sorted stages in the peer dispersion sum.
FILTER_WEIGHT = 0.5


@dataclass(slots=True)
class Stage:
    """One filter stage. ``epoch_ns`` 0 marks a stage that never held a sample."""

    offset: float = 0.0
    delay: float = 0.0
    dispersion: float = MAXDISPERSE
    epoch_ns: int = 0
    local_ns: int = 0  # local time the measurement refers to (the sample instant)
    span_ns: int = 0  # how long before local_ns the samples averaged into it began (refclock)


@dataclass(frozen=True, slots=True)
class FilterResult:
    """What one ``ClockFilter.add`` decided.

    ``updated`` is True when the peer variables now come from a sample newer than the one used
    before (the only case that should trigger selection); ``popcorn`` when the new minimum
    sample was rejected as a spike.
    """

    updated: bool
    popcorn: bool = False
    spike: float = 0.0  # s, |new - previous offset| when popcorn
    valid: int = 0  # samples with distance below the cut-offs


class ClockFilter:
    """Clock filter shift register plus the peer statistics derived from it.

    ``precision_floor`` (s) is the lowest jitter reported (ntpd floors at the system
    precision); ``maxdist`` (s) the selection threshold that marks samples as too far for the
    jitter estimate and disables popcorn suppression while the peer is still settling.
    """

    def __init__(self, *, precision_floor: float = 2.0**-20, maxdist: float = 1.5) -> None:
        self.precision_floor = precision_floor
        self.maxdist = maxdist
        self.clear()

    def clear(self, now_ns: int = 0) -> None:
        """Forget every sample (start-up, after a clock step)."""
        self._stages = [Stage() for _ in range(NTP_SHIFT)]
        self._next = 0  # index the next sample is written to
        self.offset = 0.0
        self.delay = 0.0
        self.dispersion = MAXDISPERSE
        #: The peer dispersion with the stages that never held a sample left out (see
        #: ``Association.selection_distance``); dummy samples of missed polls still count.
        self.filled_dispersion = MAXDISPERSE
        self.jitter = self.precision_floor
        self.epoch_ns = 0  # arrival time of the sample the peer variables came from
        self.sample_ns = 0  # and the instant that sample measured
        self.span_ns = 0  # and the averaging window before it
        self.update_ns = now_ns  # when the stage dispersions were last aged
        self.order: list[int] = list(range(NTP_SHIFT))
        #: The newest sample was held back as a popcorn spike.
        self.last_popcorn = False

    def add(
        self,
        offset: float,
        delay: float,
        dispersion: float,
        now_ns: int,
        *,
        poll: int,
        local_ns: int | None = None,
        span_ns: int = 0,
    ) -> FilterResult:
        """Shift in one sample that arrived at ``now_ns`` (``local_ns``: the instant it
        measures, default ``now_ns``; ``span_ns``: the averaging window before it, for a
        refclock poll); ``poll`` is the host poll exponent."""
        self.last_popcorn = False
        stage = self._stages[self._next]
        stage.offset, stage.delay, stage.dispersion, stage.epoch_ns = (
            offset,
            delay,
            min(dispersion, MAXDISPERSE),
            now_ns,
        )
        stage.local_ns = now_ns if local_ns is None else local_ns
        stage.span_ns = max(0, int(span_ns))
        newest = self._next
        self._next = (self._next + 1) % NTP_SHIFT

        # Age the older stages by the time since the last filter run.
        elapsed = max(0, now_ns - self.update_ns) / NS_PER_S if self.update_ns else 0.0
        self.update_ns = now_ns
        for i, s in enumerate(self._stages):
            if i != newest:
                s.dispersion = min(s.dispersion + PHI * elapsed, MAXDISPERSE)

        # Newest first, so a stable sort leaves the newest sample first among equal distances.
        newest_first = [(newest - k) % NTP_SHIFT for k in range(NTP_SHIFT)]
        distance = {i: self._distance(self._stages[i], now_ns) for i in newest_first}
        order = sorted(newest_first, key=lambda i: distance[i])
        self.order = order

        valid = 0
        for i in order:
            d = distance[i]
            if d >= MAXDISPERSE or (valid >= 2 and d >= self.maxdist):
                continue
            valid += 1

        disp = filled = 0.0
        for i in reversed(order):
            st = self._stages[i]
            disp = FILTER_WEIGHT * (disp + st.dispersion)
            filled = FILTER_WEIGHT * (filled + (st.dispersion if st.epoch_ns else 0.0))
        self.dispersion = disp
        self.filled_dispersion = filled

        if valid == 0:
            return FilterResult(updated=False, valid=0)

        best = self._stages[order[0]]
        used = order[:valid]
        sq = sum((self._stages[i].offset - best.offset) ** 2 for i in used)
        jitter = math.sqrt(sq / (valid - 1)) if valid > 1 else 0.0
        jitter = max(jitter, self.precision_floor)

        # The gate uses the jitter established before this sample: measured with the spike
        # included, the jitter would grow as large as the spike itself and never trip it.
        spike = abs(self.offset - best.offset)
        if (
            self.epoch_ns
            and self.dispersion < self.maxdist
            and best.dispersion < self.maxdist
            and spike > CLOCK_SGATE * self.jitter
            and (best.epoch_ns - self.epoch_ns) < 2 * (2**poll) * NS_PER_S
        ):
            # The spike stays in the register (a later minimum may outrank it) but the peer
            # variables keep their previous values.
            self.last_popcorn = best is stage
            return FilterResult(updated=False, popcorn=True, spike=spike, valid=valid)

        self.jitter = jitter
        if best.epoch_ns <= self.epoch_ns:
            # An older sample is still the best: nothing new for the selection.
            return FilterResult(updated=False, valid=valid)
        self.offset = best.offset
        self.delay = best.delay
        self.epoch_ns = best.epoch_ns
        self.sample_ns = best.local_ns
        self.span_ns = best.span_ns
        return FilterResult(updated=True, valid=valid)

    def _distance(self, s: Stage, now_ns: int) -> float:
        if s.epoch_ns == 0 or s.dispersion >= MAXDISPERSE:
            return MAXDISPERSE
        if (now_ns - s.epoch_ns) / NS_PER_S > ALLAN_INTERCEPT_S:
            return s.delay + s.dispersion
        return s.delay

    def newest(self) -> Stage | None:
        """A copy of the newest real sample (not a dummy pushed for a missed poll), or None.

        The discipline feeds on every new sample, not only on the ones the minimum-delay
        pick lets through (ntpd's pick passes about one in three, and after a correction an
        old low-delay sample can hold the peer variables for eight polls).
        """
        for k in range(NTP_SHIFT):
            s = self._stages[(self._next - 1 - k) % NTP_SHIFT]
            if s.epoch_ns == 0:
                return None
            if s.dispersion < MAXDISPERSE:
                return Stage(s.offset, s.delay, s.dispersion, s.epoch_ns, s.local_ns, s.span_ns)
        return None

    def sample_count(self) -> int:
        """Stages holding real samples (not empty, not a dummy pushed for a missed poll)."""
        return sum(1 for s in self._stages if s.epoch_ns and s.dispersion < MAXDISPERSE)

    def min_delay(self) -> float:
        """The smallest delay among the stages holding real samples (0 when none)."""
        delays = [s.delay for s in self._stages if s.epoch_ns and s.dispersion < MAXDISPERSE]
        return min(delays, default=0.0)

    def stages(self) -> list[Stage]:
        """Copies of the stages, newest first (ntpq's filtoffset/filtdelay/filtdisp order)."""
        last = (self._next - 1) % NTP_SHIFT
        return [
            Stage(s.offset, s.delay, s.dispersion, s.epoch_ns, s.local_ns, s.span_ns)
            for s in (self._stages[(last - k) % NTP_SHIFT] for k in range(NTP_SHIFT))
        ]

    def dispersion_at(self, now_ns: int) -> float:
        """Peer dispersion grown by PHI since the last filter run."""
        return self.dispersion + PHI * max(0, now_ns - self.update_ns) / NS_PER_S
