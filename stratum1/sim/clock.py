"""A simulated oscillator clock that implements the Clock interface in virtual time.

True time is integer ns on a continuous (leap-free) scale; the clock's error is a float
difference. Frequency error with random-walk wander, steps, adjtime-style slews, frequency
corrections and kernel-style leap-second arming behave as the Linux kernel's do.
"""

from __future__ import annotations

import math
import random

from ..ntptime import NS_PER_S
from ..sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE

DAY_NS = 86_400 * NS_PER_S


class SimClock:
    """An oscillator with an initial offset, a frequency error and a random walk of frequency.

    ``offset`` (s) and ``freq_ppm`` are the local clock's error at the start: positive means
    the clock is ahead / runs fast. ``wander`` is the random walk of fractional frequency in
    1/sqrt(s) (1e-9 is a typical crystal). ``slew_rate`` (s/s) is how fast ``slew`` amortises
    an offset (adjtime's 500 µs/s by default). ``advance_to`` moves it through true time; the
    simulator calls it, never the code under test.
    """

    slew_rate = 500e-6  # s/s, Linux adjtime
    max_freq_ppm = 500.0

    def __init__(
        self,
        true_ns: int,
        *,
        offset: float = 0.0,
        freq_ppm: float = 0.0,
        wander: float = 1e-9,
        rng: random.Random | None = None,
        can_adjust: bool = True,
        slew_rate: float | None = None,
    ) -> None:
        if slew_rate is not None:
            if not 0 < slew_rate <= 0.1:
                raise ValueError(f"slew rate {slew_rate} s/s is outside (0, 0.1]")
            # A kernel clock slewed through the tick length (``KernelClock(max_slew_rate=)``,
            # chrony's maxslewrate) instead of adjtime's 500 µs/s.
            self.slew_rate = slew_rate
        self.true_ns = true_ns
        self._start_ns = true_ns
        self.error = offset  # s, local minus true (continuous scale)
        self.osc_ppm = freq_ppm
        self.wander = wander
        self._rng = rng or random.Random(0)
        self._adjust = can_adjust
        self._freq = 0.0
        self._slew_left = 0.0
        self._leap = LEAP_NONE
        self._leap_wait = False
        self.steps: list[int] = []
        self.leap_events: list[tuple[int, int]] = []  # (true_ns, step_ns) done by the "kernel"

    # --- Clock interface --------------------------------------------------------------------

    @property
    def can_adjust(self) -> bool:
        return self._adjust

    def now_ns(self) -> int:
        return self.true_ns + round(self.error * NS_PER_S)

    def monotonic_ns(self) -> int:
        return self.true_ns - self._start_ns + NS_PER_S

    def step(self, offset_ns: int) -> None:
        if not self._adjust:
            return
        self.error += offset_ns / NS_PER_S
        self.steps.append(offset_ns)

    def slew(self, offset: float) -> None:
        if self._adjust:
            self._slew_left = offset  # replaces what is left, as adjtime does

    def set_frequency(self, ppm: float) -> None:
        if self._adjust:
            self._freq = max(-self.max_freq_ppm, min(self.max_freq_ppm, ppm))

    def frequency(self) -> float:
        return self._freq

    # --- kernel-like extras -----------------------------------------------------------------

    def set_leap(self, leap: int) -> None:
        """Arm (LEAP_INSERT / LEAP_DELETE) or disarm the kernel's leap second at midnight."""
        if leap not in (LEAP_NONE, LEAP_INSERT, LEAP_DELETE):
            raise ValueError(f"bad leap value {leap}")
        if not self._adjust:
            return
        if leap == LEAP_NONE:
            self._leap_wait = False
        elif self._leap_wait:
            return  # Linux's TIME_WAIT: no new leap until the status bits were cleared
        self._leap = leap

    @property
    def leap_armed(self) -> int:
        return self._leap

    @property
    def slew_remaining(self) -> float:
        return self._slew_left

    # --- the simulator's side ---------------------------------------------------------------

    def advance_to(self, true_ns: int) -> None:
        """Let true time pass up to ``true_ns``, in pieces of at most one second."""
        while self.true_ns < true_ns:
            target = min(true_ns, self.true_ns + NS_PER_S)
            if self._leap != LEAP_NONE:
                local = self.now_ns()
                midnight = (local // DAY_NS + 1) * DAY_NS
                # Approximate the true time of the local midnight (rate error is < 0.1 %).
                cross = self.true_ns + (midnight - local)
                if cross <= target:
                    self._integrate(cross)
                    step = -NS_PER_S if self._leap == LEAP_INSERT else NS_PER_S
                    self.error += step / NS_PER_S
                    self.leap_events.append((self.true_ns, step))
                    self._leap = LEAP_NONE
                    self._leap_wait = True
                    continue
            self._integrate(target)

    def _integrate(self, true_ns: int) -> None:
        dt = (true_ns - self.true_ns) / NS_PER_S
        if dt <= 0:
            self.true_ns = max(self.true_ns, true_ns)
            return
        dfreq = self._rng.gauss(0.0, self.wander * math.sqrt(dt)) * 1e6 if self.wander else 0.0
        # Trapezoid: the frequency walks linearly across the piece.
        self.error += (self.osc_ppm + dfreq / 2 + self._freq) * 1e-6 * dt
        self.osc_ppm += dfreq
        if self._slew_left:
            done = min(abs(self._slew_left), self.slew_rate * dt)
            done = math.copysign(done, self._slew_left)
            self.error += done
            self._slew_left -= done
        self.true_ns = true_ns
