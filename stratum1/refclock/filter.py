"""The per-poll sample reduction of ntpd's refclock code: sort, trim toward the median, average."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reduction:
    """The result of reducing one poll's offsets (seconds)."""

    offset: float  # mean of the survivors
    jitter: float  # RMS of the survivors' differences from that mean
    kept: int  # survivors
    total: int  # samples offered


def retained(n: int) -> int:
    """How many of ``n`` samples survive the trim: n - floor(4n/10), about 60 %."""
    return n - (n * 4) // 10


def trim(offsets: Sequence[float]) -> list[float]:
    """The sorted survivors of ntpd's median trim.

    While more than ``retained(n)`` remain, the end farther from the current middle element is
    dropped (the high end on a tie), so outliers go first whichever side they are on.
    """
    off = sorted(offsets)
    m = retained(len(off))
    lo, hi = 0, len(off)
    while hi - lo > m:
        mid = off[(lo + hi) // 2]
        if off[hi - 1] - mid < mid - off[lo]:
            lo += 1
        else:
            hi -= 1
    return off[lo:hi]


def reduce_offsets(offsets: Sequence[float]) -> Reduction:
    """Trim, then average the survivors; jitter is their RMS spread about the mean.

    (ntpd computes its jitter from successive differences of the sorted survivors, which
    understates the spread of a gaussian source; the RMS about the mean is the standard
    deviation the selection code expects.) Raises ValueError on an empty sequence.
    """
    if not offsets:
        raise ValueError("no samples to reduce")
    kept = trim(offsets)
    m = len(kept)
    mean = math.fsum(kept) / m
    jitter = math.sqrt(math.fsum((x - mean) ** 2 for x in kept) / m)
    return Reduction(offset=mean, jitter=jitter, kept=m, total=len(offsets))
