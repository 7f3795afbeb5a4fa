"""The two records that carry time through the core: a driver's Sample and a poll's Measurement."""

from __future__ import annotations

from dataclasses import dataclass

from .ntptime import NS_PER_S

#: Leap indicator values (RFC 5905).
LEAP_NONE = 0
LEAP_INSERT = 1
LEAP_DELETE = 2
LEAP_NOTINSYNC = 3


@dataclass(frozen=True, slots=True)
class Sample:
    """One on-time epoch seen by a reference clock.

    ``local_ns`` is the local clock's reading (Unix ns) at the epoch, ideally a kernel timestamp;
    ``reference_ns`` the true time (Unix ns) that epoch represents.
    """

    local_ns: int
    reference_ns: int
    leap: int = LEAP_NONE

    @property
    def offset(self) -> float:
        """Reference minus local, in seconds (positive: the local clock is behind)."""
        return (self.reference_ns - self.local_ns) / NS_PER_S


@dataclass(frozen=True, slots=True)
class Measurement:
    """One reduced result per poll, handed to an association.

    Refclock units produce it from their samples (delay 0, their own jitter); network
    associations from one on-wire exchange (jitter None: the clock filter computes it).
    """

    offset: float  # s, reference minus local
    delay: float  # s, round trip (0 for refclocks)
    dispersion: float  # s
    local_ns: int  # local clock time the measurement refers to
    jitter: float | None = None  # s, when the source computed it itself
    leap: int = LEAP_NONE
    span_ns: int = 0  # how long before local_ns the samples averaged into it began
