"""Tests for stratum1/sysclock.py: struct timex layout, reads only, writes through a fake."""

from __future__ import annotations

import ctypes
import sys

import pytest

from stratum1.sample import LEAP_INSERT, LEAP_NONE
from stratum1.sysclock import (
    ADJ_FREQUENCY,
    ADJ_NANO,
    ADJ_OFFSET,
    ADJ_OFFSET_SINGLESHOT,
    ADJ_SETOFFSET,
    ADJ_STATUS,
    ADJ_TICK,
    STA_INS,
    STA_NANO,
    STA_PLL,
    STA_PPSFREQ,
    STA_PPSSIGNAL,
    STA_PPSTIME,
    STA_UNSYNC,
    TICK_SLEW_RATE,
    KernelClock,
    Timex,
    status_names,
)


class FakeKernel:
    """Stands in for libc adjtimex: records each call's struct, keeps a status word."""

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []
        self.status = STA_UNSYNC | STA_PLL
        self.freq = 0

    def __call__(self, ptr) -> int:
        tx = ptr._obj
        self.calls.append({name: getattr(tx, name) for name in ("modes", "offset", "freq",
                                                                 "status", "constant")}
                          | {"sec": tx.time.tv_sec, "nsec": tx.time.tv_usec})
        if tx.modes & ADJ_STATUS:
            self.status = tx.status
        if tx.modes & ADJ_FREQUENCY and tx.modes != ADJ_OFFSET_SINGLESHOT:
            self.freq = tx.freq
        tx.status = self.status
        tx.freq = self.freq
        return 0


@pytest.mark.skipif(sys.maxsize < 2**32 or not sys.platform.startswith("linux"),
                    reason="struct timex is 208 bytes on 64-bit Linux")
def test_struct_size_matches_the_kernel() -> None:
    assert ctypes.sizeof(Timex) == 208


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_real_read_with_modes_zero() -> None:
    k = KernelClock()  # adjust=False: only reads can reach the kernel
    state = k.read()
    assert 0 <= state.state <= 5
    assert -600.0 < state.frequency_ppm < 600.0
    assert state.tick_us > 0  # sane layout: tick is ~10000 µs at USER_HZ 100
    assert 9000 <= state.tick_us <= 11000


def test_read_only_clock_refuses_every_write() -> None:
    fake = FakeKernel()
    k = KernelClock(adjtimex=fake)
    assert not k.can_adjust
    for call in (lambda: k.step(1), lambda: k.slew(0.001), lambda: k.set_frequency(1.0),
                 lambda: k.set_leap(LEAP_INSERT)):
        with pytest.raises(PermissionError):
            call()
    assert all(c["modes"] == 0 for c in fake.calls)


def test_writes_are_packed_as_the_kernel_expects() -> None:
    fake = FakeKernel()
    k = KernelClock(adjust=True, adjtimex=fake)
    k.step(-1_500_000_000)
    assert fake.calls[-1]["modes"] == ADJ_SETOFFSET | ADJ_NANO
    assert (fake.calls[-1]["sec"], fake.calls[-1]["nsec"]) == (-2, 500_000_000)
    k.slew(-0.000250)
    assert fake.calls[-1]["modes"] == ADJ_OFFSET_SINGLESHOT
    assert fake.calls[-1]["offset"] == -250
    k.set_frequency(-12.5)
    assert fake.calls[-1]["freq"] == -12.5 * 65536
    assert fake.calls[-1]["status"] & STA_PLL == 0  # our loop, not the kernel PLL
    assert k.frequency() == -12.5
    k.set_frequency(900.0)
    assert k.frequency() == 500.0
    k.set_leap(LEAP_INSERT)
    assert fake.status & STA_INS
    k.set_leap(LEAP_NONE)
    assert not fake.status & STA_INS
    k.set_sync(True, 0.001, 0.0001)
    assert not fake.status & STA_UNSYNC


def test_errors_are_oserrors() -> None:
    k = KernelClock(adjust=True, adjtimex=lambda ptr: -1)
    with pytest.raises(OSError):
        k.slew(0.001)


def test_kernel_pps_on_and_off() -> None:
    fake = FakeKernel()
    fake.status = STA_UNSYNC
    k = KernelClock(adjust=True, adjtimex=fake)
    k.set_kernel_pps(True)
    on = fake.calls[-1]
    assert on["modes"] == ADJ_STATUS | ADJ_NANO
    assert on["status"] & (STA_PPSTIME | STA_PPSFREQ | STA_PLL) == STA_PPSTIME | STA_PPSFREQ | STA_PLL
    k.set_kernel_pps(False)
    off = fake.calls[-1]
    # Off drops the PPS loop's leftover phase correction: ADJ_OFFSET 0 while PLL is still on.
    assert off["modes"] == ADJ_STATUS | ADJ_OFFSET | ADJ_NANO
    assert off["offset"] == 0
    assert off["status"] & STA_PLL and not off["status"] & (STA_PPSTIME | STA_PPSFREQ)
    with pytest.raises(PermissionError):
        KernelClock(adjtimex=fake).set_kernel_pps(True)


def test_status_names_and_pps_counters() -> None:
    assert status_names(0) == ""
    assert status_names(STA_PLL | STA_PPSFREQ | STA_PPSTIME | STA_PPSSIGNAL | STA_NANO) == (
        "PLL,PPSFREQ,PPSTIME,PPSSIGNAL,NANO")

    def kernel(ptr) -> int:
        tx = ptr._obj
        tx.status, tx.stabil, tx.jitcnt, tx.calcnt, tx.errcnt, tx.stbcnt = (
            STA_PPSSIGNAL | STA_NANO, 65536 // 4, 3, 40, 2, 1)
        tx.jitter = 1500
        return 0

    kt = KernelClock(adjtimex=kernel).read()
    assert kt.status_text == "PPSSIGNAL,NANO"
    assert kt.pps_stability_ppm == 0.25
    assert (kt.pps_jitter_count, kt.pps_calibrations, kt.pps_errors, kt.pps_stability_count) == (
        3, 40, 2, 1)
    assert kt.pps_jitter_ns == 1500


class TickKernel(FakeKernel):
    """A fake adjtimex that also keeps time: integrates what tick, frequency and the
    singleshot slew did to the clock (``gained``, s) over a fake CLOCK_MONOTONIC_RAW."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_ns = 1_000 * 1_000_000_000
        self._at = self.raw_ns
        self.tick = 10_000
        self.single = 0.0  # s the kernel's singleshot slew still has to do
        self.gained = 0.0

    def advance(self, seconds: float, steps: int = 1000) -> None:
        for _ in range(steps):
            self.raw_ns += round(seconds / steps * 1e9)
            self._integrate()

    def _integrate(self) -> None:
        dt = (self.raw_ns - self._at) / 1e9
        self._at = self.raw_ns
        ppm = (self.tick - 10_000) * 100 + self.freq / 65536
        self.gained += ppm * 1e-6 * dt
        done = min(abs(self.single), 500e-6 * dt)
        done = done if self.single > 0 else -done
        self.gained += done
        self.single -= done

    def __call__(self, ptr) -> int:
        self._integrate()
        tx = ptr._obj
        if tx.modes == ADJ_OFFSET_SINGLESHOT:
            self.single = tx.offset * 1e-6
        elif tx.modes & ADJ_TICK:
            assert 9000 <= tx.tick <= 11000  # the kernel's limits (±10 %)
            self.tick = tx.tick
        rc = super().__call__(ptr)
        tx.tick = self.tick
        return rc


def fast_clock(rate: float = TICK_SLEW_RATE) -> tuple[KernelClock, TickKernel]:
    fake = TickKernel()
    k = KernelClock(adjust=True, adjtimex=fake, max_slew_rate=rate,
                    monotonic_raw_ns=lambda: fake.raw_ns)
    k.nominal_tick_us = 10_000
    return k, fake


def test_fast_slew_through_the_tick_length_ends_on_time() -> None:
    k, fake = fast_clock()
    assert k.slew_rate == pytest.approx(1 / 12)
    k.set_frequency(-20.0)
    k.slew(0.010)
    assert fake.tick > 10_000  # the clock runs fast by the tick length
    left = k.service_slew()
    assert left == pytest.approx(0.010 * 12, rel=0.01)
    fake.advance(left / 2)
    assert k.service_slew() == pytest.approx(left / 2, rel=0.02)  # not due: nothing changes
    assert fake.tick > 10_000
    fake.advance(left / 2)
    assert k.service_slew() is None
    assert fake.tick == 10_000 and fake.freq == round(-20.0 * 65536)
    assert k.frequency() == -20.0
    fake.advance(2.0)
    # 10 ms slewed on top of the -20 PPM frequency, within a microsecond.
    assert fake.gained == pytest.approx(0.010 - 20e-6 * (left + 2.0), abs=1e-6)


def test_a_late_end_is_made_good_by_the_kernel_slew() -> None:
    k, fake = fast_clock()
    k.set_frequency(0.0)
    k.slew(-0.005)
    left = k.service_slew()
    assert left is not None
    fake.advance(left + 0.004)  # the timer came 4 ms late: 333 µs too far
    assert k.service_slew() is None
    assert fake.single == pytest.approx(333e-6, rel=0.02)
    fake.advance(2.0)
    assert fake.gained == pytest.approx(-0.005, abs=1e-6)


def test_fast_slew_is_replaced_and_frequency_changes_keep_it_going() -> None:
    k, fake = fast_clock()
    k.set_frequency(5.0)
    k.slew(0.008)
    fake.advance(0.048)  # 4 ms of the 8 done
    k.set_frequency(-5.0)  # the loop's next update: new frequency, the slew goes on
    assert fake.tick > 10_000
    k.slew(0.001)  # replaces what was left (adjtime semantics)
    due = k.service_slew()
    assert due == pytest.approx(0.012, rel=0.02)
    fake.advance(due)
    assert k.service_slew() is None
    fake.advance(0.5 - due)
    k.slew(0.0002)  # small: the kernel's own slew, no tick change
    assert fake.tick == 10_000 and fake.single == pytest.approx(0.0002)
    fake.advance(1.0)
    expect = 0.004 + 0.001 + 0.0002 + 5e-6 * 0.048 - 5e-6 * 1.5
    assert fake.gained == pytest.approx(expect, abs=2e-6)


def test_forced_end_on_exit_and_bad_rates() -> None:
    k, fake = fast_clock()
    k.slew(0.050)
    fake.advance(0.1)
    assert k.service_slew(force=True) is None
    assert fake.tick == 10_000 and fake.single > 0  # the rest is the kernel's, bounded
    for bad in (0.0, 400e-6, 0.2):
        with pytest.raises(ValueError):
            KernelClock(adjtimex=FakeKernel(), max_slew_rate=bad)
    ro = KernelClock(adjtimex=FakeKernel(), max_slew_rate=TICK_SLEW_RATE)
    with pytest.raises(PermissionError):
        ro.slew(0.010)
