"""Virtual time for driver tests: an EventLoop stand-in whose timers run on demand, a Clock tied
to it, and a RefclockConfig stand-in, so a driver runs hours of operation in milliseconds.

    loop = VirtualLoop(); clock = VirtualClock(loop)
    unit = RefclockUnit(unit_config(type=99), loop, clock); unit.start()
    loop.advance(64); m = unit.poll(clock.now_ns())
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from ..config.model import RefclockConfig
from ..eventloop import Timer
from ..ntptime import NS_PER_S

#: 2026-01-01T00:00:00Z, a default start for virtual clocks.
DEFAULT_EPOCH_NS = 1_767_225_600 * NS_PER_S


class VirtualLoop:
    """The timer and reader API of EventLoop, on a virtual monotonic clock.

    Readers are only recorded (tests call the callbacks themselves, or use real descriptors
    with the real EventLoop). ``advance()`` runs due timers in time order.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self.readers: dict[int, Callable[[], None]] = {}
        self.errors: list[BaseException] = []

    def now_ns(self) -> int:
        return self._now

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self._now + max(0, int(delay_s * NS_PER_S)), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def call_every(
        self, interval_s: float, callback: Callable[[], None], first_s: float | None = None
    ) -> Timer:
        interval_ns = int(interval_s * NS_PER_S)
        if interval_ns <= 0:
            raise ValueError("interval must be positive")
        handle = Timer(0, -1, callback)

        def fire(due: int) -> None:
            if handle.cancelled:
                return
            nxt = due + interval_ns
            heapq.heappush(self._timers, Timer(nxt, next(self._seq), lambda: fire(nxt)))
            callback()

        start = self._now + int((interval_s if first_s is None else first_s) * NS_PER_S)
        heapq.heappush(self._timers, Timer(start, next(self._seq), lambda: fire(start)))
        return handle

    def advance(self, seconds: float, max_events: int = 1_000_000) -> int:
        """Run every timer due within the next ``seconds``; returns how many ran. Exceptions
        from callbacks are collected in ``errors`` (like EventLoop, which logs them)."""
        end = self._now + int(seconds * NS_PER_S)
        ran = 0
        while self._timers and self._timers[0].due_ns <= end:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.due_ns)
            ran += 1
            if ran > max_events:
                raise RuntimeError("too many timer events: a timer loop?")
            try:
                timer.callback()
            except Exception as exc:
                self.errors.append(exc)
        self._now = end
        return ran

    def pending(self) -> int:
        return sum(1 for t in self._timers if not t.cancelled)


class VirtualClock:
    """A Clock reading ``epoch_ns`` plus the loop's virtual time; never adjusts anything."""

    can_adjust = False

    def __init__(self, loop: VirtualLoop, epoch_ns: int = DEFAULT_EPOCH_NS) -> None:
        self._loop = loop
        self._epoch = epoch_ns

    def now_ns(self) -> int:
        return self._epoch + self._loop.now_ns()

    def monotonic_ns(self) -> int:
        return self._loop.now_ns()

    def step(self, offset_ns: int) -> None:
        raise PermissionError("VirtualClock is read-only")

    def slew(self, offset: float) -> None:
        raise PermissionError("VirtualClock is read-only")

    def set_frequency(self, ppm: float) -> None:
        raise PermissionError("VirtualClock is read-only")

    def frequency(self) -> float:
        return 0.0


class RecordingContext:
    """A DriverContext that records everything a driver hands over. Time codes given only to
    number pulses (``add_sample(..., lock_only=True)``) go to ``locks``."""

    def __init__(self, clock: Any = None, loop: Any = None, address: str = "127.127.0.0") -> None:
        self.clock = clock
        self.loop = loop
        self.address = address
        self.samples: list[Any] = []
        self.locks: list[Any] = []
        self.pulses: list[int] = []
        self.faults: list[str] = []
        self.timecodes: list[str] = []
        self.counts: dict[str, int] = {}
        self.precisions: list[int] = []

    def set_precision(self, precision: int) -> None:
        self.precisions.append(precision)

    def add_sample(self, sample: Any, *, lock_only: bool = False) -> None:
        (self.locks if lock_only else self.samples).append(sample)

    def add_pulse(self, local_ns: int) -> None:
        self.pulses.append(local_ns)

    def report_fault(self, message: str) -> None:
        self.faults.append(message)

    def log_timecode(self, timecode: str) -> None:
        self.timecodes.append(timecode)

    def count(self, counter: str, n: int = 1) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + n


def unit_config(**fields: Any) -> RefclockConfig:
    """A RefclockConfig for tests and tools that have no parsed configuration: ``type`` is
    required; ``unit`` defaults to 0 and ``driver`` to blank."""
    fields.setdefault("unit", 0)
    fields.setdefault("driver", "")
    return RefclockConfig(**fields)
