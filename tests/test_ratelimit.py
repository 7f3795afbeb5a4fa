"""Tests for stratum1/ratelimit.py: ntpd's discard average/minimum rules with a virtual clock,
KoD pacing, and the MRU list's bounds and ageing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1 import ratelimit
from stratum1.config.model import Discard, Mru
from stratum1.ratelimit import ENTRY_BYTES, KOD, LIMITED, MruLimits, RateLimiter

S = 1_000_000_000
T0 = 1_700_000_000 * S
LIMITED_KOD = LIMITED | KOD


def _run(limiter: RateLimiter, period_ns: int, count: int, *, host: str = "192.0.2.1",
         mode: int = 3, start: int = T0, flags: int = LIMITED_KOD) -> list[int]:  # fmt: skip
    return [limiter.observe(host, 123, mode, 4, start + i * period_ns, flags)
            for i in range(count)]  # fmt: skip


def test_polite_client_is_never_limited() -> None:
    limiter = RateLimiter()
    results = _run(limiter, 8 * S, 500)
    assert all(r & LIMITED == 0 for r in results)
    # 2^average is the minimum average headway: a steady 6 s client is fine too (2 s grace).
    assert all(r & LIMITED == 0 for r in _run(RateLimiter(), 6 * S, 500))


def test_fast_client_is_limited_after_its_budget() -> None:
    limiter = RateLimiter()
    results = _run(limiter, 1 * S, 40)
    limited = [i for i, r in enumerate(results) if r & LIMITED]
    # ntpd arithmetic (head 8, limit 64, 1 s spacing): the bucket gains 8 - 2 - 1 = 5 a packet,
    # so packets 0..12 pass and packet 13 is the first over the average.
    assert limited[0] == 13
    assert all(r & LIMITED for r in results[13:])
    assert limiter.stats.limited == len(limited)


def test_kod_at_most_once_per_average_headway() -> None:
    limiter = RateLimiter()
    results = _run(limiter, 1 * S, 200)
    kods = [i for i, r in enumerate(results) if r & KOD]
    assert kods, "a persistent abuser gets KoDs"
    gaps = [b - a for a, b in zip(kods, kods[1:], strict=False)]
    # Topped up to limit + head on each KoD, the bucket must drain below the limit again
    # before the next one: never more often than one per 2^average seconds.
    assert min(gaps) >= 8
    # Every limited packet without a KoD is simply dropped.
    assert all(r & LIMITED for r in results[kods[0]:])


def test_minimum_spacing() -> None:
    limiter = RateLimiter()
    first = limiter.observe("192.0.2.1", 123, 3, 4, T0, LIMITED_KOD)
    second = limiter.observe("192.0.2.1", 123, 3, 4, T0 + S // 3, LIMITED_KOD)
    assert first & LIMITED == 0
    assert second & LIMITED_KOD == LIMITED_KOD  # under the 2 s guard (1 s grace): KoD
    # One second later is within the grace of "minimum 2".
    limiter2 = RateLimiter()
    limiter2.observe("192.0.2.2", 123, 3, 4, T0, LIMITED_KOD)
    assert limiter2.observe("192.0.2.2", 123, 3, 4, T0 + S, LIMITED_KOD) & LIMITED == 0


def test_backing_off_restores_service() -> None:
    limiter = RateLimiter()
    results = _run(limiter, 1 * S, 30)
    assert results[-1] & LIMITED
    later = T0 + 29 * S
    # Polling every 16 s drains the bucket: service resumes within the limit's worth of time.
    after = [limiter.observe("192.0.2.1", 123, 3, 4, later + (i + 1) * 16 * S, LIMITED_KOD)
             for i in range(10)]  # fmt: skip
    assert after[-1] & LIMITED == 0


def test_discard_parameters_change_the_limits() -> None:
    strict = RateLimiter(MruLimits(average=6, minimum=30))
    results = _run(strict, 20 * S, 5)
    assert results[1] & LIMITED  # 20 s spacing is under "minimum 30"
    loose = RateLimiter(MruLimits(average=0, minimum=0))
    assert not any(r & LIMITED for r in _run(loose, 2 * S, 100))


def test_flags_without_limited_are_passed_through() -> None:
    limiter = RateLimiter()
    results = _run(limiter, S // 10, 50, flags=0x0080)
    # The counter still runs, but only LIMITED/KOD are ever added or removed.
    assert {r & ~LIMITED_KOD for r in results} == {0x0080}


def test_control_packets_do_not_use_the_time_budget() -> None:
    limiter = RateLimiter()
    _run(limiter, S // 10, 100, mode=6)
    entry = limiter.get("192.0.2.1")
    assert entry is not None and entry.count == 100 and entry.leak == 0 and entry.mode == 6
    assert limiter.observe("192.0.2.1", 123, 3, 4, T0 + 11 * S, LIMITED_KOD) & LIMITED == 0


def test_entry_records_what_mrulist_shows() -> None:
    limiter = RateLimiter()
    limiter.observe("192.0.2.1", 40000, 3, 3, T0, 0x10)
    limiter.observe("192.0.2.1", 40001, 3, 4, T0 + 64 * S, 0x10)
    (entry,) = limiter.entries()
    assert (entry.address, entry.port, entry.count, entry.mode, entry.version) == (
        "192.0.2.1", 40001, 2, 3, 4)  # fmt: skip
    assert (entry.first_ns, entry.last_ns) == (T0, T0 + 64 * S)
    assert entry.flags == 0x10
    assert entry.average_interval() == 64.0


def test_entries_are_most_recent_first() -> None:
    limiter = RateLimiter()
    for i, host in enumerate(["192.0.2.1", "192.0.2.2", "192.0.2.3"]):
        limiter.observe(host, 123, 3, 4, T0 + i * S, 0)
    limiter.observe("192.0.2.1", 123, 3, 4, T0 + 10 * S, 0)
    assert [e.address for e in limiter.entries()] == ["192.0.2.1", "192.0.2.3", "192.0.2.2"]


def test_clock_stepping_backwards_counts_as_no_headway() -> None:
    limiter = RateLimiter()
    limiter.observe("192.0.2.1", 123, 3, 4, T0, LIMITED_KOD)
    result = limiter.observe("192.0.2.1", 123, 3, 4, T0 - 3600 * S, LIMITED_KOD)
    assert result & LIMITED  # a zero interval, like a burst


# -- bounds and ageing -----------------------------------------------------------------------
def _flood(limiter: RateLimiter, count: int, spacing_ns: int = S // 1000) -> None:
    for i in range(count):
        limiter.observe(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 123, 3, 4,
                        T0 + i * spacing_ns, LIMITED_KOD)  # fmt: skip


def test_list_is_bounded_by_maxdepth() -> None:
    limiter = RateLimiter(MruLimits(mindepth=10, maxdepth=50), rng=lambda: 0.0)
    _flood(limiter, 5000)
    assert len(limiter) == 50
    assert limiter.stats.peak == 50
    assert limiter.stats.recycled_full == 5000 - 50


def test_full_list_of_young_entries_does_not_record_newcomers() -> None:
    # ntpd: with the oldest entry young, a newcomer is recorded only with probability
    # age / monitor; unrecorded packets get no rate limiting (LIMITED/KOD cleared).
    limiter = RateLimiter(MruLimits(mindepth=10, maxdepth=20), rng=lambda: 1.0)
    _flood(limiter, 20)
    result = limiter.observe("192.0.2.99", 123, 3, 4, T0 + S, LIMITED_KOD)
    assert result & LIMITED_KOD == 0
    assert limiter.get("192.0.2.99") is None
    assert limiter.stats.not_recorded == 1
    assert len(limiter) == 20


def test_ntpsec_minage_rule() -> None:
    limiter = RateLimiter(MruLimits(mindepth=2, maxdepth=3, minage=64), rng=lambda: 0.0)
    _flood(limiter, 3)
    limiter.observe("192.0.2.99", 123, 3, 4, T0 + 10 * S, 0)
    assert limiter.get("192.0.2.99") is None
    limiter.observe("192.0.2.99", 123, 3, 4, T0 + 63 * S, 0)  # oldest now ~63 s: still too young
    assert limiter.get("192.0.2.99") is None
    limiter.observe("192.0.2.99", 123, 3, 4, T0 + 64 * S, 0)  # old enough to preempt
    assert limiter.get("192.0.2.99") is not None
    assert len(limiter) == 3


def test_old_entries_are_recycled_past_mindepth() -> None:
    limiter = RateLimiter(MruLimits(mindepth=3, maxdepth=1000, maxage=64))
    _flood(limiter, 3)
    # The oldest is 100 s old: reused rather than growing the list.
    limiter.observe("192.0.2.50", 123, 3, 4, T0 + 100 * S, 0)
    assert len(limiter) == 3
    assert limiter.stats.recycled_old == 1
    assert limiter.get("10.0.0.0") is None


def test_expire_ages_out_idle_entries_but_keeps_mindepth() -> None:
    limiter = RateLimiter(MruLimits(mindepth=5, maxdepth=1000, maxage=64))
    _flood(limiter, 100)
    assert limiter.expire(T0 + 10 * S) == 0  # nobody idle for long yet
    removed = limiter.expire(T0 + 1000 * S)
    assert removed == 95 and len(limiter) == 5
    assert limiter.oldest_age(T0 + 1000 * S) >= 900


def test_expire_is_bounded_per_call() -> None:
    limiter = RateLimiter(MruLimits(mindepth=0, maxdepth=1000, maxage=1))
    _flood(limiter, 500)
    assert limiter.expire(T0 + 1000 * S, budget=100) == 100
    assert len(limiter) == 400


def test_limits_from_config() -> None:
    limits = MruLimits.from_config(Mru(maxmem=64, mindepth=10, maxage=3600),
                                   Discard(average=4, minimum=1, monitor=10))  # fmt: skip
    assert limits.maxdepth == 64 * 1024 // ENTRY_BYTES
    assert (limits.mindepth, limits.maxage, limits.average, limits.minimum, limits.monitor) == (
        10, 3600, 4, 1, 10)  # fmt: skip
    both = MruLimits.from_config(Mru(maxdepth=100, maxmem=1024), None)
    assert both.maxdepth == 100
    assert MruLimits.from_config(Mru(maxdepth=5), None).mindepth == 5
    default = MruLimits.from_config(None, None)
    assert default.maxdepth * ENTRY_BYTES <= 1024 * 1024
    assert default.mindepth == 600 and default.maxage == 64


def test_memory_stays_bounded_under_a_spoofed_flood() -> None:
    limiter = RateLimiter(MruLimits.from_config(Mru(maxmem=16), None), rng=lambda: 0.0)
    _flood(limiter, 20_000, spacing_ns=S // 10_000)
    assert len(limiter) <= 16 * 1024 // ENTRY_BYTES


def _twins(a: MruLimits, b: MruLimits, flags: int, leak: int,
           compiled: bool = False) -> tuple[RateLimiter, RateLimiter]:  # fmt: skip
    """Two limiters in the same state: 192.0.2.1 known with ``leak`` used, 192.0.2.9 newer;
    the first always pure Python, the second compiled where built if ``compiled``."""
    one, two = RateLimiter(a, compiled=False), RateLimiter(b, compiled=compiled)
    for limiter in (one, two):
        limiter.observe("192.0.2.1", 123, 3, 4, T0, flags)
        limiter.observe("192.0.2.9", 123, 3, 4, T0, flags)  # another entry, now the newest
        limiter.get("192.0.2.1").leak = leak  # type: ignore[union-attr]
    return one, two


def _observed_one_by_one(limiter: RateLimiter, gaps: list[int],
                         flags: int) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
    """Requests from 192.0.2.1:40000 ``gaps`` apart, each through ``observe``: their times,
    versions and resulting flags."""
    times, now = [], T0
    for gap in gaps:
        now += gap
        times.append(now)
    versions = [4 - k % 2 for k in range(len(times))]
    results = [limiter.observe("192.0.2.1", 40000, 3, v, t, flags)
               for v, t in zip(versions, times, strict=True)]  # fmt: skip
    return times, versions, results


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0, 1, S // 10, S // 2 - 1, S // 2, S, 3 * S, -S]), max_size=40),
       st.integers(0, 3), st.sampled_from([0, LIMITED, LIMITED_KOD]), st.integers(0, 100))
def test_observe_run_is_observe_in_a_row(gaps: list[int], minimum: int, flags: int,
                                         leak: int) -> None:  # fmt: skip
    one, run = _twins(MruLimits(minimum=minimum), MruLimits(minimum=minimum), flags, leak)
    times, versions, results = _observed_one_by_one(one, gaps, flags)
    want = [(k, f) for k, f in enumerate(results) if f & LIMITED]
    got: list[tuple[int, int]] = []
    entry = run.get("192.0.2.1")
    assert entry is not None
    run.observe_run(entry, 40000, versions, times, 0, len(times), flags, got)
    fields = ("port", "first_ns", "last_ns", "count", "flags", "mode", "version", "leak")
    a, b = one.get("192.0.2.1"), entry
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert [e.address for e in one.entries()] == [e.address for e in run.entries()]
    assert one.stats == run.stats
    if flags:
        assert got == want
    else:
        assert one.stats.limited == run.stats.limited


_needs_compiled = pytest.mark.skipif(ratelimit._compiled_observe_runs is None,
                                     reason="the compiled hot path was not built")  # fmt: skip


@_needs_compiled
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0, 1, S // 10, S // 2 - 1, S // 2, S, 3 * S, -S]), min_size=1,
                max_size=40),
       st.integers(0, 3), st.sampled_from([0, LIMITED, LIMITED_KOD]), st.integers(0, 100))
def test_compiled_runs_are_observe_in_a_row(gaps: list[int], minimum: int, flags: int,
                                            leak: int) -> None:  # fmt: skip
    one, run = _twins(MruLimits(minimum=minimum), MruLimits(minimum=minimum), flags, leak,
                      compiled=True)  # fmt: skip
    times, versions, results = _observed_one_by_one(one, gaps, flags)
    done, checked, last, limited = run.observe_current_runs(
        [("192.0.2.1", 40000)], [0], versions, times, 0, False, 0)  # fmt: skip
    assert (done, checked, last) == (1, len(times), results[-1])
    assert limited == ([(k, f) for k, f in enumerate(results) if f & LIMITED] if flags else [])
    fields = ("port", "first_ns", "last_ns", "count", "flags", "mode", "version", "leak")
    a, b = one.get("192.0.2.1"), run.get("192.0.2.1")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert [e.address for e in one.entries()] == [e.address for e in run.entries()]
    assert one.stats == run.stats


@_needs_compiled
def test_compiled_runs_stop_where_python_must_decide() -> None:
    limiter = RateLimiter()
    limiter.observe("192.0.2.1", 40000, 3, 4, T0, LIMITED, generation=5)
    limiter.observe("192.0.2.2", 40000, 3, 4, T0, LIMITED, generation=4)  # an older table
    limiter.observe("192.0.2.3", 40000, 3, 4, T0, LIMITED | 0x0001, generation=5)
    times = [T0 + S * 10 + k for k in range(4)]
    senders = [("192.0.2.1", 1), ("192.0.2.7", 2), ("192.0.2.1", 3)]
    # The second run's address has no entry yet: only the first run is done here.
    assert limiter.observe_current_runs(senders, [0, 2, 3], [4] * 4, times, 5, False, 0)[:2] \
        == (1, 2)  # fmt: skip
    assert limiter.get("192.0.2.1").count == 3  # type: ignore[union-attr]
    stale = [("192.0.2.2", 1)]
    assert limiter.observe_current_runs(stale, [0], [4], times[:1], 5, False, 0)[0] == 0
    # A version outside 1-4 is the per-request check's to refuse or count.
    assert limiter.observe_current_runs(senders[:1], [0], [5], times[:1], 5, False, 0)[0] == 0
    deferred = [("192.0.2.3", 1)]
    assert limiter.observe_current_runs(deferred, [0], [4], times[:1], 5, False, 0x0001)[0] == 0
    assert limiter.observe_current_runs(deferred, [0], [4], times[:1], 5, False, 0)[0] == 1
    # With ntpport entries in the table, the entry's lookup must be for the same kind of port.
    assert limiter.observe_current_runs([("192.0.2.1", 123)], [0], [4], times[3:], 5, True,
                                        0)[0] == 0  # fmt: skip
    assert limiter.observe_current_runs([("192.0.2.1", 9)], [0], [4], times[3:], 5, True,
                                        0)[0] == 1  # fmt: skip
    assert RateLimiter(compiled=False).observe_current_runs(senders, [0, 2, 3], [4] * 4, times,
                                                            5, False, 0)[0] == 0  # fmt: skip
