"""Tests for stratum1/clockfilter.py: the 8-stage clock filter."""

from __future__ import annotations

import math

import pytest

from stratum1.clockfilter import MAXDISPERSE, NTP_SHIFT, PHI, ClockFilter

S = 1_000_000_000
T0 = 1_767_225_600 * S
POLL = 6


def feed(f: ClockFilter, samples, start=T0, step=64 * S):
    results = []
    for i, (off, dly, disp) in enumerate(samples):
        results.append(f.add(off, dly, disp, start + i * step, poll=POLL))
    return results


def test_first_sample_is_used_and_empty_stages_keep_dispersion_high():
    f = ClockFilter(precision_floor=2**-20)
    r = f.add(0.010, 0.020, 0.001, T0, poll=POLL)
    assert r.updated and r.valid == 1
    assert f.offset == 0.010 and f.delay == 0.020
    # 0.001/2 + 16 * (1/4 + 1/8 + ... + 1/256)
    expected = 0.001 / 2 + MAXDISPERSE * sum(0.5 ** (i + 1) for i in range(1, NTP_SHIFT))
    assert f.dispersion == pytest.approx(expected)
    assert f.jitter == 2**-20  # a lone sample: jitter floored at the precision


def test_dispersion_halves_per_sample_and_falls_below_maxdist_after_four():
    f = ClockFilter()
    disps = []
    for i in range(NTP_SHIFT):
        f.add(0.0, 0.01, 0.0, T0 + i * S, poll=POLL)
        disps.append(f.dispersion)
    assert all(b < a for a, b in zip(disps, disps[1:], strict=False))
    assert disps[2] > 1.5 > disps[3]  # "usually four packets" (ntpd docs, maxdist)
    assert disps[-1] < 0.001


def test_minimum_delay_sample_wins():
    f = ClockFilter()
    feed(f, [(0.005, 0.050, 0.0), (0.001, 0.010, 0.0), (0.009, 0.090, 0.0)], step=S)
    assert f.offset == 0.001 and f.delay == 0.010


def test_older_best_sample_is_not_reported_as_new():
    f = ClockFilter()
    r1, r2 = feed(f, [(0.001, 0.010, 0.0), (0.009, 0.090, 0.0)], step=S)
    assert r1.updated
    assert not r2.updated  # the minimum is still the first sample: nothing new to select
    assert f.offset == 0.001


def test_ties_prefer_the_newest_sample():
    f = ClockFilter()
    feed(f, [(0.001, 0.0, 0.0), (0.002, 0.0, 0.0), (0.003, 0.0, 0.0)], step=S)
    assert f.offset == 0.003


def test_jitter_is_rms_difference_to_best_sample():
    f = ClockFilter()
    offs = [0.001, -0.001, 0.002, 0.0]
    feed(f, [(o, 0.0, 0.0) for o in offs], step=S)
    best = offs[-1]
    expect = math.sqrt(sum((o - best) ** 2 for o in offs) / (len(offs) - 1))
    assert f.jitter == pytest.approx(expect)


def test_dispersion_grows_at_phi():
    f = ClockFilter()
    f.add(0.0, 0.0, 0.0, T0, poll=POLL)
    f.add(0.0, 0.0, 0.0, T0 + 1000 * S, poll=POLL)
    older = f.stages()[1]
    assert older.dispersion == pytest.approx(PHI * 1000)
    assert f.dispersion_at(T0 + 2000 * S) == pytest.approx(f.dispersion + PHI * 1000)


def test_popcorn_spike_is_suppressed_then_a_persistent_change_is_accepted():
    f = ClockFilter(precision_floor=1e-6)
    for i in range(8):
        f.add(0.0001 * (-1) ** i, 0.0, 0.0, T0 + i * 64 * S, poll=POLL)
    assert f.jitter > 0
    before = f.offset
    spike = f.add(0.5, 0.0, 0.0, T0 + 8 * 64 * S, poll=POLL)
    assert spike.popcorn and not spike.updated
    assert f.offset == before
    # The next sample is two polls after the last one used: no longer a spike.
    later = f.add(0.5, 0.0, 0.0, T0 + 9 * 64 * S, poll=POLL)
    assert later.updated and f.offset == 0.5


def test_no_popcorn_while_settling():
    f = ClockFilter()
    f.add(0.0, 0.0, 0.0, T0, poll=POLL)
    r = f.add(0.3, 0.0, 0.0, T0 + 64 * S, poll=POLL)
    assert r.updated and not r.popcorn  # dispersion still above maxdist


def test_dummy_samples_only_raise_dispersion():
    f = ClockFilter()
    feed(f, [(0.002, 0.0, 0.0)] * 4, step=S)
    before = (f.offset, f.dispersion)
    r = f.add(0.0, 0.0, MAXDISPERSE, T0 + 10 * S, poll=POLL)
    assert not r.updated
    assert f.offset == before[0]
    assert f.dispersion > before[1]


def test_stages_newest_first_and_clear():
    f = ClockFilter()
    feed(f, [(0.001, 0.0, 0.0), (0.002, 0.0, 0.0)], step=S)
    st = f.stages()
    assert [s.offset for s in st[:2]] == [0.002, 0.001]
    assert st[2].epoch_ns == 0 and st[2].dispersion == MAXDISPERSE
    f.clear(T0 + 5 * S)
    assert f.epoch_ns == 0 and f.dispersion == MAXDISPERSE
    assert all(s.epoch_ns == 0 for s in f.stages())


def test_sample_instant_is_kept_separately_from_arrival():
    f = ClockFilter()
    f.add(0.001, 0.0, 0.0, T0 + 5 * S, poll=POLL, local_ns=T0)
    assert f.epoch_ns == T0 + 5 * S and f.sample_ns == T0


def test_newest_is_the_latest_real_sample_whether_picked_or_not():
    f = ClockFilter()
    assert f.newest() is None
    f.add(0.001, 0.010, 0.0, T0, poll=POLL, local_ns=T0 - S, span_ns=15 * S)
    f.add(0.002, 0.050, 0.0, T0 + 64 * S, poll=POLL)  # larger delay: not the pick
    assert f.offset == 0.001 and f.span_ns == 15 * S
    n = f.newest()
    assert n is not None and n.offset == 0.002 and n.delay == 0.050 and n.span_ns == 0
    assert f.min_delay() == 0.010
    # A dummy pushed for missed polls is not a sample: the newest real one is reported.
    f.add(0.0, 0.0, MAXDISPERSE, T0 + 128 * S, poll=POLL)
    n = f.newest()
    assert n is not None and n.offset == 0.002


def test_popcorn_spike_is_flagged_as_the_newest():
    f = ClockFilter()
    for i in range(NTP_SHIFT):
        f.add(1e-5 * (i % 2), 0.01, 0.0, T0 + i * 64 * S, poll=POLL)
    assert not f.last_popcorn
    r = f.add(0.5, 0.001, 0.0, T0 + NTP_SHIFT * 64 * S, poll=POLL)
    assert r.popcorn and f.last_popcorn
    f.add(1e-5, 0.01, 0.0, T0 + (NTP_SHIFT + 1) * 64 * S, poll=POLL)
    assert not f.last_popcorn


def test_sample_count_and_the_dispersion_of_filled_stages():
    f = ClockFilter()
    assert f.sample_count() == 0 and f.filled_dispersion == MAXDISPERSE
    for i in range(3):
        f.add(0.0, 0.01, 0.001, T0 + i * S, poll=POLL)
    assert f.sample_count() == 3
    # The three real stages alone (aged a little), the five empty ones left out.
    assert f.filled_dispersion < 0.002 < 1.5 < f.dispersion
    f.add(0.0, 0.0, MAXDISPERSE, T0 + 3 * S, poll=POLL)  # a missed poll's dummy
    assert f.sample_count() == 3
    assert f.filled_dispersion >= MAXDISPERSE / 16  # the dummy counts in full (4th stage)
    f.clear(T0)
    assert f.sample_count() == 0 and f.filled_dispersion == MAXDISPERSE
