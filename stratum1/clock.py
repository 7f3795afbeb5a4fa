"""The Clock interface: the one place the daemon reads or (when allowed) adjusts time.

``SystemClock`` reads CLOCK_REALTIME; adjusting it goes through ``adjtimex`` (see the
discipline code). ``FrozenDisciplineClock`` wraps any clock and refuses every adjustment:
that is what ``--no-discipline`` and every test use, so no test ever moves this machine's clock.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Reads and adjusts a clock. Absolute times are integer Unix nanoseconds."""

    def now_ns(self) -> int:
        """The clock's current time (CLOCK_REALTIME for the system clock)."""
        ...

    def monotonic_ns(self) -> int:
        """A monotonic reading for intervals and timers."""
        ...

    def step(self, offset_ns: int) -> None:
        """Jump the clock by ``offset_ns`` (positive: forward)."""
        ...

    def slew(self, offset: float) -> None:
        """Start amortising ``offset`` seconds gradually (kernel PLL/adjtime style)."""
        ...

    def set_frequency(self, ppm: float) -> None:
        """Set the frequency correction in parts per million (positive: speed up)."""
        ...

    def frequency(self) -> float:
        """The frequency correction now in effect, in PPM."""
        ...

    @property
    def can_adjust(self) -> bool:
        """False when adjustments are ignored (``--no-discipline``, tests)."""
        ...


class SystemClock:
    """CLOCK_REALTIME of this machine, read-only until the discipline code enables adjusting."""

    can_adjust = False

    def now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_REALTIME)

    def monotonic_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def step(self, offset_ns: int) -> None:
        raise PermissionError("this SystemClock does not adjust the clock")

    def slew(self, offset: float) -> None:
        raise PermissionError("this SystemClock does not adjust the clock")

    def set_frequency(self, ppm: float) -> None:
        raise PermissionError("this SystemClock does not adjust the clock")

    def frequency(self) -> float:
        return 0.0


class FrozenDisciplineClock:
    """Wraps a clock; reads pass through, adjustments are recorded but never applied."""

    can_adjust = False

    def __init__(self, inner: Clock) -> None:
        self._inner = inner
        self._freq = 0.0
        self.requested_steps: list[int] = []

    def now_ns(self) -> int:
        return self._inner.now_ns()

    def monotonic_ns(self) -> int:
        return self._inner.monotonic_ns()

    def step(self, offset_ns: int) -> None:
        self.requested_steps.append(offset_ns)

    def slew(self, offset: float) -> None:
        pass

    def set_frequency(self, ppm: float) -> None:
        self._freq = ppm

    def frequency(self) -> float:
        return self._freq
