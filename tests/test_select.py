"""Tests for stratum1/select.py: intersection, clustering, combining, clock-hop, leap vote."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE
from stratum1.select import (
    Candidate,
    ClockHop,
    Tos,
    cluster,
    combine,
    intersect,
    leap_vote,
    select_sources,
    selection_jitters,
)


def c(key, offset, distance, jitter=1e-6, stratum=1, **kw):
    return Candidate(key, offset, distance, jitter, stratum, **kw)


def keys(cands):
    return sorted(x.key for x in cands)


# -- intersection: hand-worked cases --------------------------------------------------------


def test_all_overlapping_agree():
    # A [8,12], B [11,13], C [10,12]: the interval is [11,12] with no falseticker.
    r = intersect([c("A", 10, 2), c("B", 12, 1), c("C", 11, 1)])
    assert (r.low, r.high, r.allow) == (11, 12, 0)
    assert keys(r.truechimers) == ["A", "B", "C"] and not r.falsetickers


def test_one_of_three_is_a_falseticker():
    # A [8,9] does not meet B [10,12] and C [11,13]; with one falseticker allowed: [11,12].
    r = intersect([c("A", 8.5, 0.5), c("B", 11, 1), c("C", 12, 1)])
    assert (r.low, r.high, r.allow) == (11, 12, 1)
    assert keys(r.truechimers) == ["B", "C"] and keys(r.falsetickers) == ["A"]


def test_rfc5905_style_four_sources_one_falseticker():
    # The correctness intervals of A, B and C overlap in [-0.3, 0.7]; D is far away.
    cands = [c("A", 0.0, 1.0), c("B", 0.5, 1.0), c("C", 0.2, 0.5), c("D", 5.0, 1.0)]
    r = intersect(cands)
    assert r.allow == 1
    assert r.low == pytest.approx(-0.3) and r.high == pytest.approx(0.7)
    assert keys(r.truechimers) == ["A", "B", "C"] and keys(r.falsetickers) == ["D"]


def test_two_disjoint_sources_have_no_majority():
    # With two candidates allow stays 0: NMEA and PPS must overlap to both survive.
    r = intersect([c("NMEA", 0.0, 0.001), c("PPS", 0.010, 0.001)])
    assert not r.truechimers and keys(r.falsetickers) == ["NMEA", "PPS"]


def test_intersection_must_have_width():
    # ntpd requires high > low: intervals that only touch do not make a majority.
    assert not intersect([c("A", 0.0, 1.0), c("B", 2.0, 1.0)]).truechimers
    assert keys(intersect([c("A", 0.0, 1.0), c("B", 1.999, 1.0)]).truechimers) == ["A", "B"]


def test_true_source_always_survives_intersection():
    r = intersect([c("A", 0.0, 0.1), c("B", 0.05, 0.1), c("T", 9.0, 0.1, true=True)])
    assert keys(r.truechimers) == ["A", "B", "T"]


def test_two_falsetickers_out_of_five():
    cands = [c(i, o, 0.01) for i, o in enumerate([0.0, 0.002, -0.003, 1.0, -2.0])]
    r = intersect(cands)
    assert r.allow == 2
    assert keys(r.truechimers) == [0, 1, 2] and keys(r.falsetickers) == [3, 4]


def test_majority_of_falsetickers_leaves_nothing():
    cands = [c(i, o, 0.01) for i, o in enumerate([0.0, 1.0, 2.0, 3.0])]
    assert not intersect(cands).truechimers


# -- clustering ----------------------------------------------------------------------------


def test_selection_jitter():
    sj = selection_jitters([c("A", 0.0, 1), c("B", 0.003, 1), c("C", 0.004, 1)])
    assert sj["A"] == pytest.approx(math.sqrt((0.003**2 + 0.004**2) / 2))
    assert selection_jitters([c("A", 1.0, 1)]) == {"A": 0.0}


def test_cluster_casts_out_worst_down_to_minclock():
    cands = [c(i, o, 0.01) for i, o in enumerate([0.0, 0.001, -0.001, 0.0005, 0.02, -0.015])]
    r = cluster(cands, minclock=3, maxclock=10)
    assert len(r.survivors) == 3
    assert 4 in keys(r.outliers) and 5 in keys(r.outliers)
    assert not r.backups


def test_cluster_stops_when_selection_jitter_below_peer_jitter():
    cands = [c(i, o, 0.01, jitter=0.01) for i, o in enumerate([0.0, 0.001, -0.001, 0.002])]
    r = cluster(cands, minclock=1, maxclock=10)
    assert len(r.survivors) == 4  # they agree better than each measures itself


def test_cluster_never_casts_out_prefer_or_true():
    cands = [c(0, 0.0, 0.01), c(1, 0.001, 0.01), c(2, -0.001, 0.01), c(3, 0.05, 0.01, prefer=True)]
    r = cluster(cands, minclock=1, maxclock=10)
    assert 3 in keys(r.survivors)


def test_cluster_marks_backups_beyond_maxclock():
    cands = [c(i, 0.001 * i * (-1) ** i, 0.01) for i in range(6)]
    r = cluster(cands, minclock=2, maxclock=3)
    assert len(r.backups) == 3 and len(r.outliers) == 1 and len(r.survivors) == 2


# -- combining, clock-hop, leap ----------------------------------------------------------


def test_combine_weights_by_inverse_root_distance():
    a, b = c("A", 0.0, 0.01), c("B", 0.01, 0.02)
    off, jit = combine([a, b], a, {"A": 0.0, "B": 0.0})
    assert off == pytest.approx((100 * 0.0 + 50 * 0.01) / 150)
    assert jit == pytest.approx(math.sqrt(50 * 0.01**2 / 150))


def test_clockhop_keeps_old_peer_until_threshold_halves_below_difference():
    hop = ClockHop()
    old, new = c("old", 0.0, 0.01), c("new", 0.0003, 0.005)
    picks = [hop.choose(new, old, mindist=0.001).key for _ in range(3)]
    # thresholds 1 ms, 0.5 ms: keep; 0.25 ms < 0.3 ms: hop
    assert picks == ["old", "old", "new"]
    assert hop.choose(c("far", 0.01, 0.001), old, mindist=0.001).key == "far"
    assert hop.choose(old, None, mindist=0.001).key == "old"


def test_leap_vote():
    assert leap_vote([c(i, 0, 1, leap=LEAP_INSERT) for i in range(2)] + [c(3, 0, 1)]) == (
        LEAP_INSERT
    )
    assert leap_vote([c(0, 0, 1, leap=LEAP_INSERT), c(1, 0, 1), c(2, 0, 1)]) == LEAP_NONE
    refclock_says = [c(0, 0, 1, leap=LEAP_DELETE, refclock=True), c(1, 0, 1), c(2, 0, 1)]
    assert leap_vote(refclock_says) == LEAP_DELETE
    assert leap_vote([]) == LEAP_NONE


# -- the whole pipeline ------------------------------------------------------------------


def test_select_sources_codes_and_system_peer():
    cands = [
        c(1, 0.000, 0.010),
        c(2, 0.001, 0.020, stratum=2),
        c(3, -0.001, 0.015),
        c(4, 0.500, 0.010),
    ]
    sel = select_sources(cands, Tos())
    assert sel.codes[4] == 1  # falseticker 'x'
    assert sel.system_peer is not None and sel.system_peer.key == 1
    assert {sel.codes[k] for k in (2, 3)} == {4}
    assert sel.codes[1] == 6
    assert abs(sel.offset) < 0.001


def test_minsane_leaves_the_building_dark():
    sel = select_sources([c(1, 0.0, 0.01)], Tos(minsane=2))
    assert sel.system_peer is None and sel.codes[1] == 4


def test_pps_truechimer_is_set_aside():
    sel = select_sources([c(1, 0.0, 0.01, prefer=True), c(2, 0.0001, 0.001, pps=True)], Tos())
    assert sel.pps_candidate is not None and sel.pps_candidate.key == 2
    assert sel.system_peer is not None and sel.system_peer.key == 1
    assert sel.codes[2] == 0


def test_fallback_used_only_without_truechimers():
    local = c(9, 0.0, 0.001, stratum=10)
    sel = select_sources([], Tos(), fallback=local)
    assert sel.system_peer is not None and sel.system_peer.key == 9
    sel = select_sources([c(1, 0.0, 0.01)], Tos(), fallback=local)
    assert sel.system_peer is not None and sel.system_peer.key == 1


def test_tos_validation_and_mapping():
    with pytest.raises(ValueError, match="minclock"):
        Tos(minclock=0)
    with pytest.raises(ValueError, match="mindist"):
        Tos(mindist=2.0, maxdist=1.0)
    t = Tos.from_mapping({"maxdistance": 2.0, "minclock": 4.0, "orphan": 8})
    assert (t.maxdist, t.minclock, t.orphan) == (2.0, 4, 8)
    with pytest.raises(ValueError, match="unknown"):
        Tos.from_mapping({"bogus": 1})
    with pytest.raises(ValueError, match="integer"):
        Tos.from_mapping({"minclock": 2.5})


# -- properties -------------------------------------------------------------------------

finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
dist = st.floats(min_value=1e-4, max_value=5.0, allow_nan=False)


@given(st.lists(st.tuples(finite, dist), min_size=1, max_size=12))
def test_intersection_partitions_and_contains_majority(items):
    cands = [c(i, o, d) for i, (o, d) in enumerate(items)]
    r = intersect(cands)
    assert sorted(keys(r.truechimers) + keys(r.falsetickers)) == list(range(len(cands)))
    if r.truechimers:
        # More than half of the candidates contain a point of [low, high].
        assert r.high > r.low and 2 * r.allow < len(cands)
        assert len(r.truechimers) >= len(cands) - r.allow


@given(finite, st.lists(dist, min_size=1, max_size=10))
def test_sources_sharing_a_point_are_all_truechimers(point, distances):
    # Every interval contains ``point`` strictly inside: nobody is a falseticker.
    cands = [c(i, point + (0.5 * d if i % 2 else -0.5 * d), d) for i, d in enumerate(distances)]
    assert not intersect(cands).falsetickers


@given(st.lists(st.tuples(finite, dist, dist), min_size=1, max_size=10))
def test_cluster_and_combine_stay_within_survivor_range(items):
    cands = [c(i, o, d, j) for i, (o, d, j) in enumerate(items)]
    r = cluster(cands, minclock=3, maxclock=10)
    assert 1 <= len(r.survivors) <= len(cands)
    off, jit = combine(r.survivors, r.survivors[0], r.seljit)
    lo = min(x.offset for x in r.survivors)
    hi = max(x.offset for x in r.survivors)
    assert lo - 1e-9 <= off <= hi + 1e-9 and jit >= 0
