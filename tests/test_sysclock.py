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
    STA_INS,
    STA_NANO,
    STA_PLL,
    STA_PPSFREQ,
    STA_PPSSIGNAL,
    STA_PPSTIME,
    STA_UNSYNC,
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
