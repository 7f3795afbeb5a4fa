"""Tests for stratum1/discipline.py: ntpd's thresholds and the loop's convergence."""

from __future__ import annotations

import random

import pytest

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.discipline import IGNORE, PANIC, SLEW, STEP, Discipline, fit_line, runs_ok
from stratum1.sim.clock import SimClock

NS = 1_000_000_000
T0 = 1_750_000_000 * NS


def run_pps(
    d: Discipline,
    clk: SimClock,
    seconds: int,
    poll_s: int = 16,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> list[float]:
    """Feed the discipline window averages of per-second samples; return the error each second."""
    rng = rng or random.Random(1)
    errors, window = [], []
    start = clk.true_ns
    for s in range(1, seconds + 1):
        t = start + s * NS
        clk.advance_to(t)
        err = (clk.now_ns() - t) / NS
        errors.append(err)
        window.append(-err + (rng.gauss(0.0, noise) if noise else 0.0))
        if s % poll_s == 0:
            off = sum(window) / len(window)
            jit = max(noise / len(window) ** 0.5, 1e-9)
            d.update(off, jit, clk.now_ns(), poll=4, span_ns=(len(window) - 1) * NS)
            window = []
    return errors


def test_converges_from_10ms_and_20ppm_off() -> None:
    clk = SimClock(T0, offset=0.010, freq_ppm=20.0, rng=random.Random(3))
    d = Discipline(clk)
    errors = run_pps(d, clk, 600)
    assert abs(errors[-1]) < 10e-6
    assert max(abs(e) for e in errors[300:]) < 10e-6
    assert d.frequency_ppm() == pytest.approx(-20.0, abs=0.05)
    assert clk.steps == []  # 10 ms is slewed, never stepped


@pytest.mark.parametrize("estimator", ["kalman", "regression"])
def test_noisy_samples_converge(estimator: str) -> None:
    rng = random.Random(5)
    clk = SimClock(T0, offset=-0.005, freq_ppm=-35.0, rng=rng)
    d = Discipline(clk, estimator=estimator)
    errors = run_pps(d, clk, 1800, noise=1e-3, rng=rng)
    late = errors[900:]
    rms = (sum(e * e for e in late) / len(late)) ** 0.5
    assert rms < 300e-6
    assert d.frequency_ppm() == pytest.approx(35.0, abs=1.0)


def test_drift_file_frequency_is_applied_at_start() -> None:
    clk = SimClock(T0, freq_ppm=12.0, rng=random.Random(1))
    Discipline(clk, initial_frequency_ppm=-12.0)
    assert clk.frequency() == -12.0


def test_frequency_is_clamped_to_500_ppm() -> None:
    clk = SimClock(T0, rng=random.Random(1), wander=0.0)
    d = Discipline(clk, initial_frequency_ppm=900.0)
    assert d.frequency_ppm() == 500.0
    now = clk.now_ns()
    d.update(0.0, 1e-6, now, poll=4)
    # A runaway: the offset grows 1 ms per second.
    r = d.update(0.016, 1e-6, now + 16 * NS, poll=4)
    r = d.update(0.100, 1e-6, now + 32 * NS, poll=4)
    assert abs(r.frequency_ppm) <= 500.0


def test_initial_step_above_threshold() -> None:
    clk = SimClock(T0, rng=random.Random(1))
    d = Discipline(clk)
    r = d.update(0.5, 1e-6, clk.now_ns(), poll=4)
    assert r.action == STEP
    assert clk.steps == [500_000_000]
    assert d.clock_set


def test_spike_ignored_then_stepped_after_stepout() -> None:
    clk = SimClock(T0, rng=random.Random(1), wander=0.0)
    d = Discipline(clk, stepout=900.0)
    now = clk.now_ns()
    assert d.update(0.001, 1e-4, now, poll=4).action == SLEW
    assert d.update(0.3, 1e-4, now + 16 * NS, poll=4).action == IGNORE
    assert d.update(0.3, 1e-4, now + 500 * NS, poll=4).action == IGNORE
    assert d.spike_pending
    # A good sample ends the spike.
    assert d.update(0.0, 1e-4, now + 600 * NS, poll=4).action == SLEW
    assert not d.spike_pending
    assert d.update(0.3, 1e-4, now + 700 * NS, poll=4).action == IGNORE
    r = d.update(0.3, 1e-4, now + 1601 * NS, poll=4)
    assert r.action == STEP
    assert clk.steps == [300_000_000]


def test_x_option_step_threshold_600s_slews_large_offsets() -> None:
    clk = SimClock(T0, rng=random.Random(1))
    d = Discipline(clk, step_threshold=600.0)
    r = d.update(2.0, 1e-3, clk.now_ns(), poll=4)
    assert r.action == SLEW
    assert clk.steps == []
    assert clk.slew_remaining == pytest.approx(2.0)


def test_panic_without_g_and_first_step_with_g() -> None:
    clk = SimClock(T0, rng=random.Random(1))
    d = Discipline(clk)
    assert d.update(5000.0, 1e-3, clk.now_ns(), poll=4).action == PANIC
    assert clk.steps == []
    d = Discipline(clk, allow_first_big_step=True)
    assert d.update(5000.0, 1e-3, clk.now_ns(), poll=4).action == STEP
    assert clk.steps == [5000 * NS]
    # Once set, a big error makes the daemon exit, -g or not.
    assert d.update(-2000.0, 1e-3, clk.now_ns(), poll=4).action == PANIC


def test_panic_zero_disables_panic() -> None:
    clk = SimClock(T0, rng=random.Random(1))
    d = Discipline(clk, panic=0.0)
    assert d.update(5000.0, 1e-3, clk.now_ns(), poll=4).action == STEP


def test_step_zero_never_steps() -> None:
    clk = SimClock(T0, rng=random.Random(1))
    d = Discipline(clk, step_threshold=0.0)
    assert d.update(0.5, 1e-3, clk.now_ns(), poll=4).action == SLEW
    assert clk.steps == []


def test_no_discipline_decides_but_applies_nothing() -> None:
    inner = SimClock(T0, offset=0.002, freq_ppm=10.0, rng=random.Random(1), wander=0.0)
    frozen = FrozenDisciplineClock(inner)
    d = Discipline(frozen, initial_frequency_ppm=3.0)
    results = []
    for k in range(1, 40):
        inner.advance_to(T0 + k * 16 * NS)
        err = (inner.now_ns() - inner.true_ns) / NS
        results.append(d.update(-err, 1e-7, frozen.now_ns(), poll=4))
    assert frozen.requested_steps == []
    assert frozen.frequency() == 0.0
    assert inner.frequency() == 0.0 and inner.steps == []
    # It still measures what it would correct.
    assert d.frequency_ppm() == pytest.approx(-10.0, abs=0.01)
    assert results[-1].action == SLEW
    d = Discipline(frozen)
    r = d.update(0.5, 1e-7, frozen.now_ns(), poll=4)  # would step, but must not
    assert r.action == STEP and frozen.requested_steps == []


def test_read_only_system_clock_is_never_touched() -> None:
    d = Discipline(SystemClock())
    r = d.update(3.0, 1e-3, 1_800_000_000 * NS, poll=6)
    assert r.action == STEP  # decided; SystemClock would raise if anything were applied


def test_poll_adapts_up_when_quiet_and_down_when_noisy() -> None:
    clk = SimClock(T0, rng=random.Random(2))
    d = Discipline(clk, minpoll=4, maxpoll=6)
    run_pps(d, clk, 3000)
    assert d.poll == 6
    now = clk.now_ns()
    for k in range(1, 25):  # offsets far outside the jitter: the oscillator jumped
        d.update(0.002 * k, 1e-6, now + k * 64 * NS, poll=6)
    assert d.poll == 4


def test_huffpuff_removes_excess_delay() -> None:
    clk = SimClock(T0, rng=random.Random(1), wander=0.0, can_adjust=False)
    d = Discipline(clk, huffpuff=7200.0)
    now = clk.now_ns()
    d.update(0.0, 1e-4, now, poll=6, delay=0.010)
    d.update(0.0, 1e-4, now + 64 * NS, poll=6, delay=0.010)
    d.update(0.030, 1e-4, now + 128 * NS, poll=6, delay=0.050)
    assert d.last_offset == pytest.approx(0.010)
    d.update(-0.010, 1e-4, now + 192 * NS, poll=6, delay=0.050)
    assert d.last_offset == 0.0


def test_bad_arguments() -> None:
    clk = SimClock(T0)
    with pytest.raises(ValueError):
        Discipline(clk, step_threshold=-1.0)
    with pytest.raises(ValueError):
        Discipline(clk, minpoll=8, maxpoll=4)
    with pytest.raises(ValueError):
        Discipline(clk, estimator="magic")
    with pytest.raises(ValueError):
        Discipline(clk).update(float("nan"), 0.0, T0, poll=4)


def test_fit_line_recovers_a_line() -> None:
    from stratum1.discipline import _Point

    pts = [_Point(T0 + k * NS, 0.001 + 2e-6 * k, 1e-9) for k in range(10)]
    fit = fit_line(pts, T0, 0.0, 1e-3)
    assert fit.offset == pytest.approx(0.001, abs=1e-9)
    assert fit.slope == pytest.approx(2e-6, rel=1e-4)


def test_runs_test() -> None:
    assert runs_ok([1, -1, 1, -1, 1, -1, 1, -1])
    assert not runs_ok([1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1])


def test_offset_change_is_the_slew_made_net_of_the_estimated_drift() -> None:
    clk = SimClock(T0, offset=0.002, freq_ppm=0.0, wander=0.0)
    d = Discipline(clk)
    assert d.offset_change(T0, T0 + 10 * NS) == 0.0  # nothing done yet
    d.update(-0.002, 1e-6, T0, poll=4)
    clk.advance_to(T0 + 10 * NS)
    # The 2 ms slew (500 µs/s) is over after 4 s: an offset seen before it moved by -2 ms.
    change = d.offset_change(T0, T0 + 10 * NS)
    assert change == pytest.approx(-0.002 - d.frequency_ppm() * 1e-6 * 10, abs=1e-9)
    assert d.offset_change(T0 + 10 * NS, T0) == 0.0


def test_follow_external_then_take_over() -> None:
    """Another loop (the kernel's hardpps) steered for a while; ours resumes at its frequency."""
    clk = SimClock(T0, offset=0.0, freq_ppm=8.0, wander=0.0)
    d = Discipline(clk)
    d.update(-0.001, 1e-6, T0, poll=4)
    assert clk.slew_remaining == pytest.approx(-0.001)
    clk.advance_to(T0 + 100 * NS)
    d.follow_external(T0 + 100 * NS, -8.0)
    assert d.frequency_ppm() == -8.0
    # With our slew forgotten and the frequency as set, an offset stays where it was.
    assert d.offset_change(T0 + 100 * NS, T0 + 200 * NS) == pytest.approx(0.0, abs=1e-12)
    assert clk.frequency() != -8.0  # following changes nothing on the clock
    d.take_over(T0 + 200 * NS, -8.0, sigma_ppm=0.05)
    assert clk.frequency() == -8.0
    assert d.frequency_sigma_ppm == pytest.approx(0.05)
    result = d.update(20e-6, 1e-6, T0 + 216 * NS, poll=4)
    assert result.action == SLEW and result.samples == 1  # a fresh history
    assert result.frequency_ppm == pytest.approx(-8.0, abs=0.1)  # the prior held it


def test_history_before_the_first_update_gives_the_frequency_at_once() -> None:
    clk = SimClock(T0, offset=0.010, freq_ppm=20.0, wander=0.0, slew_rate=1 / 12)
    d = Discipline(clk)
    for k in range(2):
        clk.advance_to(T0 + k * 16 * NS)
        assert d.add_history(-clk.error, 1e-5, clk.now_ns())
    assert clk.frequency() == 0.0 and not d.clock_set  # history never acts on the clock
    clk.advance_to(T0 + 32 * NS)
    r = d.update(-clk.error, 1e-5, clk.now_ns(), poll=4)
    assert r.action == SLEW and r.frequency_ppm == pytest.approx(-20.0, abs=0.5)
    clk.advance_to(T0 + 33 * NS)
    assert abs(clk.error) < 10e-6  # slewed within the second, and no drift left
    assert not d.add_history(0.5, 1e-5, clk.now_ns())  # beyond the step threshold: unused
    assert not d.add_history(float("nan"), 1e-5, clk.now_ns())


def test_offset_change_before_any_update_counts_the_start_frequency() -> None:
    clk = SimClock(T0, wander=0.0)
    d = Discipline(clk, initial_frequency_ppm=-5.0)
    # The drift file's -5 PPM acted all along, and the loop expects exactly that drift.
    assert d.offset_change(T0, T0 + 10 * NS) == pytest.approx(0.0, abs=1e-12)
