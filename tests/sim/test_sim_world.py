"""Tests for stratum1/sim (clock, world, scenarios): short virtual-time runs of the real core."""

from __future__ import annotations

import random

import pytest

from stratum1.discipline import Discipline
from stratum1.leap import LeapScheduler
from stratum1.ntptime import NS_PER_S
from stratum1.sample import LEAP_INSERT, LEAP_NONE
from stratum1.sim.clock import SimClock
from stratum1.sim.scenarios import LEAP_NS, LEAP_TABLE, SCENARIOS, START_NS, leap_run
from stratum1.sim.world import Outage, RefclockModel, ServerModel, World, run, time_to


def test_sim_clock_follows_commands() -> None:
    c = SimClock(START_NS, offset=0.001, freq_ppm=10.0, wander=0.0)
    c.advance_to(START_NS + 10 * NS_PER_S)
    assert c.error == pytest.approx(0.001 + 100e-6)
    c.set_frequency(-10.0)
    c.slew(-0.001)
    c.advance_to(START_NS + 20 * NS_PER_S)
    assert c.error == pytest.approx(100e-6)  # frequency cancelled, 1 ms slewed away
    c.step(-100_000)
    assert c.error == pytest.approx(0.0, abs=1e-12)
    assert c.now_ns() == c.true_ns


def test_sim_clock_kernel_leap_once() -> None:
    c = SimClock(LEAP_NS - 10 * NS_PER_S, wander=0.0)
    c.set_leap(LEAP_INSERT)
    c.advance_to(LEAP_NS + 5 * NS_PER_S)
    assert c.leap_events == [(LEAP_NS, -NS_PER_S)]
    c.set_leap(LEAP_INSERT)  # still armed by a slow daemon: TIME_WAIT ignores it
    c.advance_to(LEAP_NS + 86_400 * NS_PER_S)
    assert len(c.leap_events) == 1


def test_pps_and_shm_through_the_system_converge() -> None:
    w = World(seed=4, start_ns=START_NS)
    d = Discipline(w.clock)
    refs = [RefclockModel("SHM", kind="shm", jitter=1e-3, prefer=True),
            RefclockModel("PPS", kind="pps")]
    s = run(w, d, refclocks=refs, seconds=900, mode="system", settle_s=600)
    assert s.t100 is not None and s.t10 is not None
    assert s.max < 5e-6
    assert s.tallies["PPS"] == "o"
    assert "step" not in s.actions


def test_falseticker_marked_x_and_never_selected() -> None:
    w = World(seed=2, start_ns=START_NS)
    d = Discipline(w.clock, minpoll=4, maxpoll=4)
    servers = [ServerModel(f"s{i}") for i in range(3)] + [ServerModel("false", offset=0.05)]
    s = run(w, d, servers=servers, seconds=900, mode="system", settle_s=600)
    assert s.tallies["false"] == "x"
    assert "false" not in s.selected
    assert s.max < 200e-6


def test_outage_falls_back_to_network_and_returns() -> None:
    w = World(seed=3, start_ns=START_NS)
    d = Discipline(w.clock)
    gone = [Outage(600, 1200)]
    refs = [RefclockModel("SHM", kind="shm", jitter=1e-3, prefer=True, outages=gone),
            RefclockModel("PPS", kind="pps", outages=gone)]
    servers = [ServerModel(f"s{i}") for i in range(3)]
    s = run(w, d, refclocks=refs, servers=servers, seconds=1800, mode="system", settle_s=0)
    during = set(s.selected[1000:1190])  # once the refclocks' reach has decayed
    assert during and during <= {"s0", "s1", "s2"}
    assert s.selected[-1] in ("SHM", "PPS")
    assert max(abs(e) for e in s.errors[600:1200]) < 1e-3
    assert max(abs(e) for e in s.errors[1600:]) < 5e-6


@pytest.mark.parametrize("kernel", [True, False])
def test_leap_second_inserted_without_a_step(kernel: bool) -> None:
    s = leap_run(1, 600, kernel=kernel, before_s=300)
    assert "step" not in s.actions and "ignore" not in s.actions
    assert max(abs(e) for e in s.errors) < 10e-6


def test_leap_indicator_before_during_after() -> None:
    sched = LeapScheduler(kernel=False, table=LEAP_TABLE)
    c = SimClock(LEAP_NS - 3 * NS_PER_S, wander=0.0)
    seen = []
    for k in range(1, 11):
        c.advance_to(LEAP_NS - 3 * NS_PER_S + k * NS_PER_S // 2)
        d = sched.update(c.now_ns())
        if d.hold_step_ns:
            c.step(d.hold_step_ns)
        seen.append((c.now_ns() - LEAP_NS, d.indicator))
    # Before: insert announced; the held (repeated) second still announces; after: none.
    assert all(bits == LEAP_INSERT for t, bits in seen[:6])
    assert seen[-1][1] == LEAP_NONE and seen[-1][0] > 0
    assert c.steps == [-NS_PER_S]


def test_time_to() -> None:
    assert time_to([1.0] * 5 + [0.0] * 100, 0.5, hold_s=60) == 6.0
    assert time_to([0.0] * 10, 0.5, hold_s=60) is None


def test_random_walk_has_the_configured_size() -> None:
    rng = random.Random(9)
    ends = []
    for _ in range(200):
        c = SimClock(START_NS, wander=1e-9, rng=rng)
        c.advance_to(START_NS + 100 * NS_PER_S)
        ends.append(c.osc_ppm * 1e-6)
    rms = (sum(x * x for x in ends) / len(ends)) ** 0.5
    assert 0.7e-8 < rms < 1.3e-8  # 1e-9 * sqrt(100 s)


def test_network_client_with_iburst_converges_and_keeps_polling() -> None:
    w = World(seed=3, start_ns=START_NS)
    d = Discipline(w.clock, minpoll=4, maxpoll=4)
    s = run(w, d, servers=[ServerModel("server", iburst=True)], seconds=900, mode="system",
            settle_s=600)
    assert s.t100 is not None
    assert s.max < 100e-6
    assert s.tallies["server"] == "*"
    assert "step" not in s.actions and s.actions.get("slew", 0) > 8


def test_sim_clock_slew_rate_is_configurable() -> None:
    c = SimClock(START_NS, offset=0.010, wander=0.0, slew_rate=1 / 12)
    c.slew(-0.010)
    c.advance_to(START_NS + NS_PER_S // 10)
    assert c.error == pytest.approx(0.010 - 0.1 / 12)
    c.advance_to(START_NS + NS_PER_S)
    assert c.error == pytest.approx(0.0, abs=1e-12) and c.slew_remaining == 0.0
    with pytest.raises(ValueError):
        SimClock(START_NS, slew_rate=0.5)


@pytest.mark.parametrize("slew_rate", [None, 1 / 12])
def test_network_client_first_correction_at_the_third_exchange(slew_rate) -> None:
    w = World(seed=2, start_ns=START_NS, slew_rate=slew_rate)
    d = Discipline(w.clock, minpoll=4, maxpoll=4)
    s = run(w, d, servers=[ServerModel("server")], seconds=600, mode="system", settle_s=300)
    # Exchanges at 1, 17, 33 s: nothing is selected before the third; then it is.
    assert set(s.selected[:32]) == {""} and s.selected[34] == "server"
    assert abs(s.errors[31]) > 0.010  # untouched until then
    assert "step" not in s.actions and s.max < 100e-6
    if slew_rate is not None:
        # The 10 ms are gone within the second and the frequency was right from the start.
        assert all(abs(e) < 500e-6 for e in s.errors[33:49])


def test_noisy_shm_alone_converges_and_holds() -> None:
    # 1 ms per sample. Seed 3 is the one whose first update once came with a 6 µs spread and
    # pinned the loop to it for two hours (errors of milliseconds); ntpd's trimmed means
    # (the reduction before) left this loop 184-271 µs off at times on these seeds.
    shm = next(sc for sc in SCENARIOS if sc.key == "3")
    for seed in (2, 3, 4):
        score = shm.build(seed, 2 * 3600, "system")
        assert score.t100 is not None
        assert score.max < 150e-6
