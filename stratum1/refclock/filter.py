"""The per-poll sample reduction of a refclock unit: reject outliers about the median, average.

ntpd trims its samples toward the middle until 60 % remain; that search settles on the
tightest cluster, and on gaussian noise its average of 16 samples is only as good as a plain
mean of 5 (standard error 0.44 σ against 0.25 σ). Rejecting by distance from the median in
units of the median absolute deviation (Iglewicz and Hoaglin's modified z-score) removes the
same outliers, on either side and up to half the samples, and keeps the mean's efficiency.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: A sample farther from the median than this many robust standard deviations is an outlier.
OUTLIER_Z = 3.5
#: MAD to standard deviation for gaussian samples.
MAD_TO_SIGMA = 1.4826
#: Mean absolute deviation to standard deviation, the fall-back scale when MAD is 0.
MEAN_DEV_TO_SIGMA = 1.2533


@dataclass(frozen=True, slots=True)
class Reduction:
    """The result of reducing one poll's offsets (seconds)."""

    offset: float  # mean of the survivors
    jitter: float  # RMS of the survivors' differences from that mean
    kept: int  # survivors
    total: int  # samples offered


def survivors(offsets: Sequence[float]) -> list[float]:
    """The sorted samples within ``OUTLIER_Z`` robust standard deviations of the median.

    The scale is the median absolute deviation; when more than half the samples are equal
    (a quantised source) the MAD is 0 and the mean absolute deviation stands in, so samples
    one quantum off are kept while a far outlier still goes.
    """
    off = sorted(offsets)
    if len(off) < 3:
        return off
    mid = statistics.median(off)
    dev = [abs(x - mid) for x in off]
    mad = statistics.median(dev)
    scale = MAD_TO_SIGMA * mad if mad > 0 else MEAN_DEV_TO_SIGMA * math.fsum(dev) / len(dev)
    bound = OUTLIER_Z * scale
    return [x for x, d in zip(off, dev, strict=True) if d <= bound]


def reduce_offsets(offsets: Sequence[float]) -> Reduction:
    """Reject outliers, then average the survivors; jitter is their RMS spread about the mean.

    (ntpd computes its jitter from successive differences of the sorted survivors, which
    understates the spread of a gaussian source; the RMS about the mean is the standard
    deviation the selection code expects.) Raises ValueError on an empty sequence.
    """
    if not offsets:
        raise ValueError("no samples to reduce")
    kept = survivors(offsets)
    m = len(kept)
    mean = math.fsum(kept) / m
    jitter = math.sqrt(math.fsum((x - mean) ** 2 for x in kept) / m)
    return Reduction(offset=mean, jitter=jitter, kept=m, total=len(offsets))
