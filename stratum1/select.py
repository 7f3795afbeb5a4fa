"""Source selection as ntpd does it: the intersection algorithm (truechimers vs falsetickers),
clustering down to ``minclock``, choosing the system peer with clock-hop hysteresis, and
combining the survivors' offsets weighted by root distance.

Pure functions over ``Candidate`` records; the system process builds the candidates from its
associations and applies the results.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from .association import (
    SEL_BACKUP,
    SEL_CANDIDATE,
    SEL_FALSETICK,
    SEL_OUTLIER,
    SEL_REJECT,
    SEL_SYSPEER,
)
from .sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE


@dataclass(frozen=True, slots=True)
class Tos:
    """The ``tos`` knobs (defaults are classic ntpd's code values)."""

    minsane: int = 1
    minclock: int = 3
    maxclock: int = 10
    mindist: float = 0.001  # s, floor of every root distance
    maxdist: float = 1.5  # s, distance threshold (TEST11)
    floor: int = 0  # sources below this stratum are unfit
    ceiling: int = 15  # sources at or above this stratum are unfit
    orphan: int = 16  # orphan stratum; 16 = orphan mode off
    orphanwait: float = 300.0  # s before LOCAL or orphan parent take over

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.minsane <= 16:
            problems.append(f"minsane {self.minsane} is outside 0..16")
        if not 1 <= self.minclock <= self.maxclock:
            problems.append(f"need 1 <= minclock ({self.minclock}) <= maxclock ({self.maxclock})")
        if not 0 < self.mindist <= self.maxdist:
            problems.append(f"need 0 < mindist ({self.mindist}) <= maxdist ({self.maxdist})")
        if not 0 <= self.floor < self.ceiling <= 16:
            problems.append(f"need 0 <= floor ({self.floor}) < ceiling ({self.ceiling}) <= 16")
        if not 1 <= self.orphan <= 16:
            problems.append(f"orphan stratum {self.orphan} is outside 1..16")
        if self.orphanwait < 0:
            problems.append(f"orphanwait {self.orphanwait} is negative")
        if problems:
            raise ValueError("tos: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, float | int]) -> Tos:
        """Build from parsed ``tos`` keywords (``maxdistance`` is accepted for maxdist)."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, float | int] = {}
        for key, value in values.items():
            name = {"maxdistance": "maxdist", "mindistance": "mindist"}.get(key, key)
            if name not in known:
                raise ValueError(f"tos: unknown keyword {key!r}")
            kwargs[name] = value
        for name in ("minsane", "minclock", "maxclock", "floor", "ceiling", "orphan"):
            if name in kwargs:
                v = kwargs[name]
                if int(v) != v:
                    raise ValueError(f"tos: {name} must be an integer, not {v!r}")
                kwargs[name] = int(v)
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Candidate:
    """What selection needs to know about one fit source."""

    key: Hashable  # the association id
    offset: float  # s
    distance: float  # s, root distance (lambda)
    jitter: float  # s, peer jitter
    stratum: int
    prefer: bool = False
    true: bool = False
    pps: bool = False
    refclock: bool = False
    leap: int = LEAP_NONE


@dataclass(frozen=True, slots=True)
class Intersection:
    low: float
    high: float
    truechimers: tuple[Candidate, ...]  # in input order
    falsetickers: tuple[Candidate, ...]
    allow: int  # falsetickers the interval was found with


def intersect(candidates: Sequence[Candidate]) -> Intersection:
    """Marzullo's algorithm as modified by Mills: the smallest interval containing points from
    the most sources, allowing up to fewer than half of them to be falsetickers.

    A truechimer is a candidate whose [offset - distance, offset + distance] overlaps the
    intersection [low, high]; ``true`` candidates always are.
    """
    n = len(candidates)
    # Lower endpoints sort before upper ones at the same value, so touching intervals overlap.
    endpoints = sorted(
        [(c.offset - c.distance, -1) for c in candidates]
        + [(c.offset + c.distance, +1) for c in candidates]
    )
    low, high = math.inf, -math.inf
    allow = 0
    found = False
    while 2 * allow < n:
        need = n - allow
        count = 0
        for value, kind in endpoints:
            count -= kind
            if count >= need:
                low = value
                break
        count = 0
        for value, kind in reversed(endpoints):
            count += kind
            if count >= need:
                high = value
                break
        if high > low:
            found = True
            break
        allow += 1
    truechimers = []
    falsetickers = []
    for c in candidates:
        overlaps = found and c.offset + c.distance >= low and c.offset - c.distance <= high
        (truechimers if overlaps or c.true else falsetickers).append(c)
    return Intersection(low, high, tuple(truechimers), tuple(falsetickers), allow)


@dataclass(frozen=True, slots=True)
class ClusterResult:
    survivors: tuple[Candidate, ...]
    seljit: Mapping[Hashable, float]  # selection jitter of each survivor in the final round
    outliers: tuple[Candidate, ...]  # cast out at or below maxclock survivors (tally '-')
    backups: tuple[Candidate, ...]  # cast out while more than maxclock remained (tally '#')


def selection_jitters(cands: Sequence[Candidate]) -> dict[Hashable, float]:
    """Each candidate's RMS offset difference to all the others (0 for a lone candidate)."""
    n = len(cands)
    out: dict[Hashable, float] = {}
    for c in cands:
        if n > 1:
            sq = sum((o.offset - c.offset) ** 2 for o in cands)
            out[c.key] = math.sqrt(sq / (n - 1))
        else:
            out[c.key] = 0.0
    return out


def cluster(cands: Sequence[Candidate], *, minclock: int, maxclock: int) -> ClusterResult:
    """Cast out, one per round, the survivor with the largest selection jitter times root
    distance, until ``minclock`` remain, or the worst selection jitter is no larger than the
    smallest peer jitter, or the worst is ``prefer``/``true`` (they have immunity)."""
    pool = list(cands)
    outliers: list[Candidate] = []
    backups: list[Candidate] = []
    while True:
        seljit = selection_jitters(pool)
        if not pool:
            break
        min_peer_jitter = min(c.jitter for c in pool)
        worst = max(pool, key=lambda c: seljit[c.key] * c.distance)
        if (
            len(pool) <= max(1, minclock)
            or seljit[worst.key] <= min_peer_jitter
            or worst.prefer
            or worst.true
        ):
            break
        (backups if len(pool) > maxclock else outliers).append(worst)
        pool.remove(worst)
    return ClusterResult(tuple(pool), seljit, tuple(outliers), tuple(backups))


def best_survivor(
    survivors: Sequence[Candidate], seljit: Mapping[Hashable, float], mindist: float
) -> Candidate:
    """The survivor with the least selection jitter times root distance plus stratum times
    mindist (the stratum term only breaks near-ties between a refclock and a network peer)."""
    return min(survivors, key=lambda c: seljit[c.key] * c.distance + c.stratum * mindist)


@dataclass(slots=True)
class ClockHop:
    """Clock-hop hysteresis: keep the current system peer while the new best one's offset is
    within a threshold that starts at mindist and halves on each selection."""

    threshold: float = 0.0

    def choose(self, best: Candidate, current: Candidate | None, mindist: float) -> Candidate:
        if current is None or current.key == best.key:
            self.threshold = 0.0
            return best
        diff = abs(best.offset - current.offset)
        if diff >= mindist:
            self.threshold = 0.0
            return best
        self.threshold = mindist if self.threshold == 0.0 else self.threshold * 0.5
        if diff < self.threshold:
            return current
        self.threshold = 0.0
        return best


def combine(
    survivors: Sequence[Candidate], system_peer: Candidate, seljit: Mapping[Hashable, float]
) -> tuple[float, float]:
    """System offset and jitter: offsets averaged with weights 1/root distance; the jitter is
    the weighted RMS difference to the system peer combined with its selection jitter."""
    wsum = osum = jsum = 0.0
    for c in survivors:
        w = 1.0 / c.distance
        wsum += w
        osum += w * c.offset
        jsum += w * (c.offset - system_peer.offset) ** 2
    offset = osum / wsum
    jitter = math.sqrt(jsum / wsum + seljit.get(system_peer.key, 0.0) ** 2)
    return offset, jitter


def leap_vote(survivors: Iterable[Candidate]) -> int:
    """The leap announcement of the survivors: a refclock's warning wins outright, otherwise
    more than half of the survivors must announce the same leap."""
    cands = list(survivors)
    n = len(cands)
    ins = dele = 0
    for c in cands:
        if c.leap == LEAP_INSERT:
            ins = n if c.refclock else min(n, ins + 1)
        elif c.leap == LEAP_DELETE:
            dele = n if c.refclock else min(n, dele + 1)
    if ins > dele and ins > n / 2:
        return LEAP_INSERT
    if dele > ins and dele > n / 2:
        return LEAP_DELETE
    return LEAP_NONE


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of one selection run (before the PPS rule)."""

    codes: Mapping[Hashable, int]  # select code of every candidate given
    survivors: tuple[Candidate, ...]
    system_peer: Candidate | None
    offset: float = 0.0
    jitter: float = 0.0
    distance: float = 0.0  # root distance of the system peer (the source's, for prefer)
    leap: int = LEAP_NONE
    pps_candidate: Candidate | None = None  # first PPS truechimer, kept out of clustering
    seljit: Mapping[Hashable, float] = field(default_factory=dict)


def select_sources(
    candidates: Sequence[Candidate],
    tos: Tos,
    *,
    current: Hashable | None = None,
    clockhop: ClockHop | None = None,
    fallback: Candidate | None = None,
) -> Selection:
    """Intersection, clustering, system peer choice and combining over fit ``candidates``.

    ``current`` is the key of the present system peer (for clock-hop hysteresis, state kept in
    ``clockhop``); ``fallback`` (LOCAL driver or orphan parent) becomes the lone survivor when
    no truechimer is left. PPS candidates that survive the intersection are set aside as
    ``pps_candidate`` (the first one) and not clustered; ``prefer`` and the PPS rule are
    applied afterwards by ``stratum1.mitigation``.
    """
    hop = clockhop if clockhop is not None else ClockHop()
    codes: dict[Hashable, int] = {c.key: SEL_FALSETICK for c in candidates}
    inter = intersect(candidates)
    pps_candidate = None
    pool: list[Candidate] = []
    for c in inter.truechimers:
        if c.pps:
            if pps_candidate is None:
                pps_candidate = c
            codes[c.key] = (
                SEL_REJECT  # an idle PPS source shows as not selected, not as falseticker
            )
            continue
        pool.append(c)
    if not pool and fallback is not None:
        pool = [fallback]
    for c in pool:
        codes[c.key] = SEL_OUTLIER
    clustered = cluster(pool, minclock=tos.minclock, maxclock=tos.maxclock)
    for c in clustered.backups:
        codes[c.key] = SEL_BACKUP
    survivors = clustered.survivors
    for c in survivors:
        codes[c.key] = SEL_CANDIDATE
    leap = leap_vote(survivors)
    if not survivors or len(survivors) < tos.minsane:
        hop.threshold = 0.0
        return Selection(
            codes, survivors, None, leap=leap, pps_candidate=pps_candidate, seljit=clustered.seljit
        )
    best = best_survivor(survivors, clustered.seljit, tos.mindist)
    old = next((c for c in survivors if c.key == current), None) if current is not None else None
    chosen = hop.choose(best, old, tos.mindist)
    offset, jitter = combine(survivors, chosen, clustered.seljit)
    codes[chosen.key] = SEL_SYSPEER
    return Selection(
        codes,
        survivors,
        chosen,
        offset,
        jitter,
        chosen.distance,
        leap,
        pps_candidate,
        clustered.seljit,
    )
