"""Tests for stratum1/kerneldisc.py: when the kernel hardpps loop takes over, what reaches the
kernel then (nothing of ours), and the fall-back to our own loop. The kernel is faked at the
adjtimex call boundary, or simulated with a clock that disciplines itself from pulses."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.discipline import IGNORE, KERNEL, SLEW
from stratum1.kerneldisc import (
    ARM_GOOD_UPDATES,
    FALLBACK_BAD_CHECKS,
    HOLDOFF_MIN_S,
    MODE_DAEMON,
    MODE_HARDPPS,
    KernelDiscipline,
    pps_problem,
    wants_kernel,
)
from stratum1.sim.clock import SimClock
from stratum1.sysclock import (
    ADJ_FREQUENCY,
    ADJ_NANO,
    ADJ_OFFSET,
    ADJ_OFFSET_SINGLESHOT,
    ADJ_STATUS,
    ADJ_TICK,
    STA_CLOCKERR,
    STA_FLL,
    STA_NANO,
    STA_PLL,
    STA_PPSERROR,
    STA_PPSFREQ,
    STA_PPSJITTER,
    STA_PPSSIGNAL,
    STA_PPSTIME,
    STA_PPSWANDER,
    STA_UNSYNC,
    TICK_SLEW_RATE,
    TIME_ERROR,
    TIME_OK,
    KernelClock,
    KernelTime,
    status_names,
)

NS = 1_000_000_000
T0 = 1_750_000_000 * NS
PPS_BITS = STA_PPSTIME | STA_PPSFREQ
# Bits user space cannot write (Linux STA_RONLY).
RONLY = STA_PPSSIGNAL | STA_PPSJITTER | STA_PPSWANDER | STA_PPSERROR | STA_CLOCKERR | STA_NANO


class FakeKernel:
    """libc adjtimex as Linux answers it, for the bits this module uses; records every write."""

    def __init__(self, freq_ppm: float = 12.5) -> None:
        self.status = STA_UNSYNC
        self.hw = STA_PPSSIGNAL  # the read-only bits the "hardware" shows now
        self.freq = round(freq_ppm * 65536)
        self.pll_offset = 0
        self.singleshot: int | None = None
        self.maxerror = 16_000_000
        self.writes: list[dict[str, int]] = []

    def __call__(self, ptr) -> int:
        tx = ptr._obj
        modes = tx.modes
        if modes:
            self.writes.append({"modes": modes, "status": tx.status, "offset": tx.offset,
                                "freq": tx.freq})
        if modes & ADJ_STATUS and modes != ADJ_OFFSET_SINGLESHOT:
            self.status = (self.status & RONLY) | (tx.status & ~RONLY)
        if modes & ADJ_NANO:
            self.status |= STA_NANO
        if modes & ADJ_FREQUENCY and modes != ADJ_OFFSET_SINGLESHOT:
            self.freq = tx.freq
        if modes == ADJ_OFFSET_SINGLESHOT:
            self.singleshot = tx.offset
        elif modes & ADJ_OFFSET and self.status & STA_PLL:
            self.pll_offset = tx.offset
        if modes & 0x0004:
            self.maxerror = tx.maxerror
        status = (self.status & ~RONLY) | (self.status & STA_NANO) | self.hw
        tx.status = status
        tx.freq = self.freq
        tx.offset = self.pll_offset
        tx.tick = 10000
        tx.maxerror = self.maxerror
        tx.jitter = 800 if status & STA_NANO else 1
        if status & STA_UNSYNC or (status & PPS_BITS and not status & STA_PPSSIGNAL):
            return TIME_ERROR
        return TIME_OK

    @property
    def kernel_status(self) -> int:
        return (self.status & ~RONLY) | (self.status & STA_NANO) | self.hw

    def writes_since(self, n: int) -> list[dict[str, int]]:
        return self.writes[n:]


def make(fake: FakeKernel | None = None, **kwargs) -> tuple[KernelDiscipline, FakeKernel]:
    fake = fake or FakeKernel()
    d = KernelDiscipline(KernelClock(adjust=True, adjtimex=fake), **kwargs)
    return d, fake


def settle(d: KernelDiscipline, start_ns: int = T0, updates: int = ARM_GOOD_UPDATES,
           offset: float = 50e-6) -> int:
    """A few small offsets through our loop (the clock counts as set); returns the next time."""
    t = start_ns
    for _ in range(updates):
        t += 16 * NS
        d.update(offset, 1e-6, t, poll=4)
    return t


def engaged(start_ns: int = T0, **kwargs) -> tuple[KernelDiscipline, FakeKernel, int]:
    d, fake = make(**kwargs)
    d.set_hardpps(True, start_ns)
    t = settle(d, start_ns)
    assert d.locked
    return d, fake, t


# --- when the kernel takes over ------------------------------------------------------------


def test_engages_with_bound_pps_clean_signal_and_small_offset() -> None:
    d, fake = make()
    d.set_hardpps(True, T0)
    for i in range(1, ARM_GOOD_UPDATES + 1):
        assert not d.locked
        result = d.update(200e-6, 1e-6, T0 + i * 16 * NS, poll=4)
        assert result.action == SLEW  # our loop first: it sets the clock and the frequency
    assert d.locked and d.mode == MODE_HARDPPS
    assert fake.kernel_status & (STA_PPSTIME | STA_PPSFREQ | STA_PLL) == (
        STA_PPSTIME | STA_PPSFREQ | STA_PLL)
    assert fake.singleshot == 0  # our slew in progress was cancelled before the hand-over
    assert d.engagements == 1 and d.status()["mode"] == "hardpps"


@pytest.mark.parametrize(("setup", "reason"), [
    (lambda d, f: d.set_kernel(False, T0), "disable kernel"),
    (lambda d, f: None, ""),  # flag3 not set: no PPS bound
    (lambda d, f: (d.set_hardpps(True, T0), setattr(f, "hw", 0)), "STA_PPSSIGNAL"),
    (lambda d, f: (d.set_hardpps(True, T0), setattr(f, "hw", STA_PPSSIGNAL | STA_PPSJITTER)),
     "STA_PPSJITTER"),
])
def test_our_loop_keeps_the_clock_otherwise(setup, reason: str) -> None:
    d, fake = make()
    setup(d, fake)
    t = settle(d)
    assert not d.locked and d.mode == MODE_DAEMON
    assert not fake.kernel_status & PPS_BITS
    assert reason in d.reason
    # Our loop's own calls reached the kernel: frequency with the PLL off, and slews.
    assert any(w["modes"] == ADJ_OFFSET_SINGLESHOT for w in fake.writes)
    assert d.update(10e-6, 1e-6, t + 16 * NS, poll=4).action == SLEW


def test_waits_until_our_loop_has_the_offset_small() -> None:
    d, fake = make()
    d.set_hardpps(True, T0)
    t = settle(d, updates=ARM_GOOD_UPDATES - 1)
    d.update(0.05, 1e-6, t + 16 * NS, poll=4)  # 50 ms: slewed by us, too far for the kernel
    assert not d.locked and "offset" in d.reason
    t = settle(d, t + 16 * NS, updates=ARM_GOOD_UPDATES - 1)
    assert not d.locked
    d.update(300e-6, 1e-6, t + 16 * NS, poll=4)
    assert d.locked


def test_flag3_without_enable_kernel_config_word() -> None:
    assert wants_kernel(frozenset({"kernel", "ntp"}))
    assert not wants_kernel(frozenset({"ntp"}))
    d, fake = make(kernel=False)
    d.set_hardpps(True, T0)
    settle(d)
    assert not d.locked and not fake.kernel_status & PPS_BITS


@pytest.mark.parametrize("clock", [FrozenDisciplineClock(SystemClock()),
                                   KernelClock(adjtimex=lambda ptr: 0)])
def test_never_with_a_clock_we_may_not_adjust(clock) -> None:
    d = KernelDiscipline(clock)
    d.set_hardpps(True, T0)
    settle(d)
    assert not d.kernel_capable and not d.locked
    d.tick(T0 + 100 * NS)  # nothing to watch, nothing raised


# --- while the kernel steers ------------------------------------------------------------


def test_locked_updates_only_measure() -> None:
    d, fake, t = engaged()
    fake.freq = round(-3.25 * 65536)  # the kernel's PPS frequency loop moved it
    before = len(fake.writes)
    for i in range(1, 6):
        result = d.update(2e-6 * i, 1e-6, t + i * 16 * NS, poll=4)
        assert result.action == KERNEL
        assert result.offset == pytest.approx(2e-6 * i)
        d.tick(t + i * 16 * NS + NS // 2)
    assert fake.writes_since(before) == []  # no slew, step or frequency of ours
    assert d.frequency_ppm() == pytest.approx(-3.25)
    assert d.jitter == pytest.approx(800e-9)  # the kernel's PPS jitter
    assert d.updates >= 8
    # Stale offsets do not move: the kernel holds the phase.
    assert d.offset_change(t, t + 60 * NS) == pytest.approx(0.0, abs=1e-12)


def test_signal_loss_hands_back_at_the_kernel_frequency() -> None:
    d, fake, t = engaged()
    fake.freq = round(-7.5 * 65536)
    fake.pll_offset = 12345  # phase correction the PPS loop left in the PLL
    fake.hw = 0  # pulses stopped: the kernel clears STA_PPSSIGNAL
    n = len(fake.writes)
    d.tick(t + NS)
    assert not d.locked and "STA_PPSSIGNAL" in d.reason
    writes = fake.writes_since(n)
    assert writes[0]["modes"] == ADJ_STATUS | ADJ_OFFSET | ADJ_NANO  # PLL offset dropped
    assert fake.pll_offset == 0
    assert not fake.kernel_status & (PPS_BITS | STA_PLL | STA_FLL)
    assert fake.freq == round(-7.5 * 65536)  # our loop starts where the kernel left off
    assert d.frequency_ppm() == pytest.approx(-7.5)
    assert d.releases == 1
    # And our loop steers again.
    assert d.update(20e-6, 1e-6, t + 16 * NS, poll=4).action == SLEW


@pytest.mark.parametrize("bit", [STA_PPSJITTER, STA_PPSWANDER, STA_PPSERROR])
def test_per_pulse_errors_must_persist(bit: int) -> None:
    d, fake, t = engaged()
    fake.hw = STA_PPSSIGNAL | bit
    for i in range(1, FALLBACK_BAD_CHECKS):
        d.tick(t + i * NS)
        d.update(1e-6, 1e-6, t + i * NS + NS // 10, poll=4)  # same second: counted once
        assert d.locked
    fake.hw = STA_PPSSIGNAL  # a good pulse clears the bits again
    d.tick(t + FALLBACK_BAD_CHECKS * NS)
    assert d.locked
    fake.hw = STA_PPSSIGNAL | bit
    for i in range(FALLBACK_BAD_CHECKS):
        d.tick(t + (10 + i) * NS)
    assert not d.locked and status_names(bit) in d.reason


def test_clock_fault_releases_at_once() -> None:
    d, fake, t = engaged()
    fake.hw = STA_PPSSIGNAL | STA_CLOCKERR
    d.tick(t + NS)
    assert not d.locked and "CLOCKERR" in d.reason


def test_someone_else_clearing_the_pps_bits() -> None:
    d, fake, t = engaged()
    fake.status &= ~PPS_BITS
    d.tick(t + NS)
    assert not d.locked and "another program" in d.reason


def test_large_offset_goes_back_to_our_loop_and_its_spike_rules() -> None:
    d, fake, t = engaged()
    result = d.update(0.5, 1e-3, t + 16 * NS, poll=4)
    assert not d.locked and "step threshold" in d.reason
    assert result.action == IGNORE  # a spike first, as ntpd: stepped only after stepout


@pytest.mark.parametrize("how", ["unbind", "disable", "close"])
def test_unbinding_disabling_or_exiting(how: str) -> None:
    d, fake, t = engaged()
    if how == "unbind":
        d.set_hardpps(False, t + NS)
    elif how == "disable":
        d.set_kernel(False, t + NS)
    else:
        d.close(t + NS)
    assert not d.locked and not fake.kernel_status & PPS_BITS


def test_holdoff_doubles_for_a_flapping_pps() -> None:
    d, fake, t = engaged()
    waits = []
    for _ in range(3):
        fake.hw = 0
        d.tick(t + NS)
        released = t + NS
        fake.hw = STA_PPSSIGNAL
        t = released
        while not d.locked:
            t += 16 * NS
            d.update(20e-6, 1e-6, t, poll=4)
            assert t - released < 2000 * NS
        waits.append((t - released) / NS)
    assert waits[0] >= HOLDOFF_MIN_S
    assert waits[1] >= 2 * HOLDOFF_MIN_S and waits[2] >= 4 * HOLDOFF_MIN_S
    assert all(w < 1.5 * lo for w, lo in zip(waits, (64, 128, 256), strict=True))


def test_cannot_enable_is_reported_not_raised() -> None:
    fake = FakeKernel()

    def refuse(ptr) -> int:
        if ptr._obj.modes & ADJ_STATUS and ptr._obj.status & STA_PPSTIME:
            return -1
        return fake(ptr)

    d = KernelDiscipline(KernelClock(adjust=True, adjtimex=refuse))
    d.set_hardpps(True, T0)
    settle(d)
    assert not d.locked and "cannot enable kernel PPS" in d.reason


# --- telling the kernel how good the time is -------------------------------------------


@dataclass
class Snap:
    synchronized: bool = True
    root_delay: float = 0.0
    root_dispersion: float = 0.0004


def test_tick_clears_unsync_and_sets_maxerror() -> None:
    d, fake = make()
    d.tick(T0, Snap())
    assert not fake.kernel_status & STA_UNSYNC
    assert fake.maxerror == 400
    n = len(fake.writes)
    d.tick(T0 + NS, Snap(root_dispersion=0.0005))
    assert len(fake.writes) == n  # refreshed every 16 s, or when the state changes
    d.tick(T0 + 17 * NS, Snap(root_dispersion=0.0005))
    assert fake.maxerror == 500
    d.tick(T0 + 18 * NS, Snap(synchronized=False))
    assert fake.kernel_status & STA_UNSYNC


def test_tick_without_adjusting_does_nothing() -> None:
    d = KernelDiscipline(KernelClock(adjtimex=lambda ptr: 0))
    d.tick(T0, Snap())  # read-only: set_sync would raise PermissionError


def test_pps_problem_names_the_bit() -> None:
    def kt(status: int) -> KernelTime:
        return KernelTime(0, status, 0, 0.0, 0, 0, 0, 0, 10000, 0, 0.0, 0)

    assert pps_problem(kt(STA_PPSSIGNAL)) is None
    assert pps_problem(kt(0)) == ("no PPS signal in the kernel (STA_PPSSIGNAL clear)", True)
    assert pps_problem(kt(STA_PPSSIGNAL | STA_PPSWANDER))[1] is False


# --- a simulated kernel that disciplines itself from the pulses ---------------------------


class HardppsSimClock(SimClock):
    """SimClock plus a crude kernel hardpps: while STA_PPSTIME is set and pulses arrive, each
    second removes half the phase error and integrates it into the frequency (STA_PPSFREQ)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.status = STA_UNSYNC
        self.pulses = True
        self.ours = 0  # slews and frequency settings of our loop

    def read(self) -> KernelTime:
        status = self.status | (STA_PPSSIGNAL if self.pulses else 0) | STA_NANO
        return KernelTime(0, status, 0, self.frequency(), 0, 0, 0, 1, 10000, 0, 0.0, 300)

    def set_kernel_pps(self, enabled: bool) -> None:
        if enabled:
            self.status |= PPS_BITS | STA_PLL
        else:
            self.status &= ~PPS_BITS

    def slew(self, offset: float) -> None:
        self.ours += offset != 0.0
        super().slew(offset)

    def set_frequency(self, ppm: float) -> None:
        self.ours += 1
        self.status &= ~(PPS_BITS | STA_PLL)
        super().set_frequency(ppm)

    def kernel_second(self) -> None:
        if self.pulses and self.status & STA_PPSTIME:
            e = self.error
            self.error -= 0.5 * e
            if self.status & STA_PPSFREQ:
                self._freq -= 0.05 * e * 1e6


def test_simulated_hand_over_and_back_without_a_jump() -> None:
    rng = random.Random(7)
    clk = HardppsSimClock(T0, offset=0.0004, freq_ppm=15.0, wander=1e-10, rng=rng)
    d = KernelDiscipline(clk)
    d.set_hardpps(True, clk.now_ns())
    errors: list[float] = []
    window: list[float] = []
    phases = {"engaged": None, "released": None, "again": None}
    ours_at_engage = 0
    for s in range(1, 1801):
        clk.advance_to(T0 + s * NS)
        clk.kernel_second()
        err = (clk.now_ns() - clk.true_ns) / NS
        errors.append(err)
        window.append(-err + rng.gauss(0.0, 1e-6))
        d.tick(clk.now_ns())
        if s == 900:
            clk.pulses = False  # the receiver lost its PPS
        if s == 1100:
            clk.pulses = True
        if s % 16 == 0:
            off = sum(window) / len(window)
            d.update(off, 1e-6 / 4, clk.now_ns(), poll=4, span_ns=(len(window) - 1) * NS)
            window = []
        if d.locked and phases["engaged"] is None:
            phases["engaged"] = s
            ours_at_engage = clk.ours
        if d.locked and phases["released"] is None:
            assert clk.ours == ours_at_engage  # nothing of ours while the kernel steers
        if phases["engaged"] and not d.locked and phases["released"] is None:
            phases["released"] = s
        if phases["released"] and d.locked and phases["again"] is None:
            phases["again"] = s
    assert phases["engaged"] is not None and phases["engaged"] < 600
    assert max(abs(e) for e in errors[phases["engaged"] - 1:]) < 200e-6
    assert phases["released"] is not None and 900 <= phases["released"] <= 902
    assert phases["again"] is not None and phases["again"] >= 1100
    assert clk.steps == []
    # Under the kernel the error shrinks to the pulses' own; after the hand-back our loop
    # holds the clock from the kernel's frequency with no jump while the pulses are gone.
    assert max(abs(e) for e in errors[700:899]) < 5e-6
    assert max(abs(e) for e in errors[899:1100]) < 50e-6
    assert d.frequency_ppm() == pytest.approx(-15.0, abs=0.2)


def test_enable_kernel_on_reload() -> None:
    d, fake = make(kernel=False)
    d.set_hardpps(True, T0)
    t = settle(d)
    assert not d.locked and d.reason == "disable kernel"
    d.set_kernel(True, t)
    assert d.reason == ""
    settle(d, t)
    assert d.locked and fake.kernel_status & PPS_BITS


def test_fast_slew_is_ended_by_tick_and_on_exit() -> None:
    fake = FakeKernel()
    raw = [5 * NS]
    clock = KernelClock(adjust=True, adjtimex=fake, max_slew_rate=TICK_SLEW_RATE,
                        monotonic_raw_ns=lambda: raw[0])
    d = KernelDiscipline(clock, kernel=False)
    assert d.update(-0.010, 1e-4, T0, poll=4).action == SLEW
    left = d.service_slew()
    assert left == pytest.approx(0.12, rel=0.05)  # 10 ms at 1/12 s/s
    assert any(w["modes"] & ADJ_TICK for w in fake.writes)
    d.tick(T0 + NS // 20)  # not due yet
    assert d.service_slew() is not None
    raw[0] += NS  # the daemon's timer was missed: the once-a-second tick ends it
    d.tick(T0 + NS)
    assert d.service_slew() is None
    assert fake.singleshot is not None and fake.singleshot > 0  # the overrun, given back
    d.update(0.002, 1e-4, T0 + 16 * NS, poll=4)
    assert d.service_slew() is not None
    d.close(T0 + 17 * NS)
    assert d.service_slew() is None
