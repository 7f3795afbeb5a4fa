"""The system clock through ctypes: clock_gettime to read, adjtimex to step, slew and tune.

Python has no adjtimex, so ``struct timex`` is declared here (208 bytes on 64-bit Linux). The
Discipline's model of the clock matches what this class does: ``step`` is ADJ_SETOFFSET,
``slew`` is ADJ_OFFSET_SINGLESHOT (the kernel amortises it at 500 µs/s), ``set_frequency``
is ADJ_FREQUENCY with the kernel PLL off. The kernel PLL and kernel PPS discipline
(``enable kernel``, the PPS driver's ``flag3``) and leap arming are separate calls. With
``adjust=False`` (the default, and ``--no-discipline``) nothing but reads ever reaches the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import time
from dataclasses import dataclass

from .ntptime import NS_PER_S
from .sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE

# modes
ADJ_OFFSET = 0x0001
ADJ_FREQUENCY = 0x0002
ADJ_MAXERROR = 0x0004
ADJ_ESTERROR = 0x0008
ADJ_STATUS = 0x0010
ADJ_TIMECONST = 0x0020
ADJ_TAI = 0x0080
ADJ_SETOFFSET = 0x0100
ADJ_MICRO = 0x1000
ADJ_NANO = 0x2000
ADJ_TICK = 0x4000
ADJ_OFFSET_SINGLESHOT = 0x8001
ADJ_OFFSET_SS_READ = 0xA001
# status bits
STA_PLL = 0x0001
STA_PPSFREQ = 0x0002
STA_PPSTIME = 0x0004
STA_FLL = 0x0008
STA_INS = 0x0010
STA_DEL = 0x0020
STA_UNSYNC = 0x0040
STA_FREQHOLD = 0x0080
STA_PPSSIGNAL = 0x0100
STA_PPSJITTER = 0x0200
STA_PPSWANDER = 0x0400
STA_PPSERROR = 0x0800
STA_CLOCKERR = 0x1000
STA_NANO = 0x2000
STA_MODE = 0x4000
STA_CLK = 0x8000
# return values (clock state)
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = range(6)
STATE_NAMES = {0: "OK", 1: "INS", 2: "DEL", 3: "OOP", 4: "WAIT", 5: "ERROR"}

#: The kernel's ADJ_OFFSET_SINGLESHOT (adjtime) slew rate, s/s.
SINGLESHOT_RATE = 500e-6
#: The fastest slew through the tick length (chrony's default maxslewrate, 83333 PPM): the
#: kernel accepts ticks within ±10 % of nominal; chrony stays at 1/12.
TICK_SLEW_RATE = 1.0 / 12.0
#: The kernel's frequency word is PPM scaled by 2^16.
FREQ_SCALE = 65536.0
MAX_FREQ_PPM = 500.0


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex`` from <sys/timex.h> (natural alignment gives the kernel's layout)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", Timeval),  # tv_usec holds ns when STA_NANO / ADJ_NANO
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True, slots=True)
class KernelTime:
    """A read of the kernel's time state (``ntptime``'s view)."""

    state: int  # TIME_* return value
    status: int  # STA_* bits
    offset_ns: int  # kernel PLL offset remaining
    frequency_ppm: float
    maxerror_us: int
    esterror_us: int
    constant: int
    precision_ns: int
    tick_us: int
    tai: int
    pps_frequency_ppm: float
    pps_jitter_ns: int
    pps_stability_ppm: float = 0.0  # kernel PPS: RMS of successive frequency changes
    pps_jitter_count: int = 0  # pulses refused for jitter (popcorn) since boot
    pps_calibrations: int = 0  # PPS calibration intervals completed
    pps_errors: int = 0  # calibration intervals discarded (bad pulse interval)
    pps_stability_count: int = 0  # intervals discarded for wander

    @property
    def nano(self) -> bool:
        return bool(self.status & STA_NANO)

    @property
    def status_text(self) -> str:
        """The status bits by name, as ``ntptime`` and ``ntpq -c kern`` print them."""
        return status_names(self.status)


_STATUS_NAMES = (
    (STA_PLL, "PLL"), (STA_PPSFREQ, "PPSFREQ"), (STA_PPSTIME, "PPSTIME"), (STA_FLL, "FLL"),
    (STA_INS, "INS"), (STA_DEL, "DEL"), (STA_UNSYNC, "UNSYNC"), (STA_FREQHOLD, "FREQHOLD"),
    (STA_PPSSIGNAL, "PPSSIGNAL"), (STA_PPSJITTER, "PPSJITTER"), (STA_PPSWANDER, "PPSWANDER"),
    (STA_PPSERROR, "PPSERROR"), (STA_CLOCKERR, "CLOCKERR"), (STA_NANO, "NANO"),
    (STA_MODE, "MODE"), (STA_CLK, "CLK"),
)


def status_names(status: int) -> str:
    """``0x2107`` -> ``"PLL,PPSFREQ,PPSTIME,PPSSIGNAL,NANO"`` (empty for no bits)."""
    return ",".join(name for bit, name in _STATUS_NAMES if status & bit)


def _load_adjtimex():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.adjtimex
    fn.argtypes = [ctypes.POINTER(Timex)]
    fn.restype = ctypes.c_int
    return fn


class KernelClock:
    """CLOCK_REALTIME of this machine, adjusted through adjtimex when ``adjust`` is True.

    ``max_slew_rate`` (s/s, up to ``TICK_SLEW_RATE``) slews offsets above 500 µs the way
    chronyd does: the tick length and frequency are set so the clock runs that much fast or
    slow, for as long as the offset takes, then put back. Ending it on time is the caller's
    part: ``service_slew()`` says how long is left and ends a slew that is due (the daemon
    runs it from a timer); what was really slewed is measured on CLOCK_MONOTONIC_RAW and any
    difference goes to the kernel's own 500 µs/s slew, so a late timer costs a short tail,
    not an error. Without it (the default) every slew is ADJ_OFFSET_SINGLESHOT at 500 µs/s.
    """

    slew_rate = SINGLESHOT_RATE  # s/s, the kernel's singleshot slew
    max_freq_ppm = MAX_FREQ_PPM

    def __init__(
        self,
        *,
        adjust: bool = False,
        adjtimex=None,
        max_slew_rate: float | None = None,
        monotonic_raw_ns=None,
    ) -> None:
        if max_slew_rate is not None and not SINGLESHOT_RATE < max_slew_rate <= TICK_SLEW_RATE:
            raise ValueError(
                f"max_slew_rate {max_slew_rate} s/s is outside ({SINGLESHOT_RATE}, "
                f"{TICK_SLEW_RATE:.6f}]"
            )
        self._adjust = adjust
        self._fn = adjtimex if adjtimex is not None else _load_adjtimex()
        self._fast = max_slew_rate
        if max_slew_rate is not None:
            self.slew_rate = max_slew_rate
        self._raw_ns = monotonic_raw_ns or (
            lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        )
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.nominal_tick_us = 1_000_000 // hz
        self._base_ppm: float | None = None  # our frequency, without the slew's share
        # The fast slew in progress: (target s, start raw ns, rate s/s actually set).
        self._slewing: tuple[float, int, float] | None = None

    # --- Clock interface --------------------------------------------------------------------

    @property
    def can_adjust(self) -> bool:
        return self._adjust

    def now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_REALTIME)

    def monotonic_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def step(self, offset_ns: int) -> None:
        """Jump by ``offset_ns`` atomically (ADJ_SETOFFSET: no read-modify-write race)."""
        tx = Timex()
        tx.modes = ADJ_SETOFFSET | ADJ_NANO
        sec, nsec = divmod(int(offset_ns), NS_PER_S)  # the kernel wants 0 <= nsec < 1e9
        tx.time.tv_sec = sec
        tx.time.tv_usec = nsec
        self._call(tx)

    def slew(self, offset: float) -> None:
        """Amortise ``offset`` s, replacing any slew in progress (adjtime): at 500 µs/s, or
        at ``max_slew_rate`` through the tick length when that is set and the offset is
        above what 500 µs/s does in a second."""
        if self._fast is None:
            self._singleshot(offset)
            return
        if self._slewing is not None:
            self._end_fast()
        if abs(offset) <= SINGLESHOT_RATE:
            self._singleshot(offset)
            return
        self._singleshot(0.0)  # what the kernel still had to slew is replaced
        self._start_fast(offset)

    def service_slew(self, *, force: bool = False) -> float | None:
        """End the fast slew if it is due (or at once with ``force``: on exit); return the
        seconds left until it is due, or None when none is in progress."""
        if self._slewing is None:
            return None
        target, start, rate = self._slewing
        left = abs(target / rate) - (self._raw_ns() - start) / NS_PER_S
        if left > 1e-6 and not force:  # a microsecond early is on time (rounding)
            return left
        self._end_fast()
        return None

    def set_frequency(self, ppm: float) -> None:
        """Set the frequency correction with the kernel PLL/FLL off (the daemon's loop rules)."""
        ppm = max(-MAX_FREQ_PPM, min(MAX_FREQ_PPM, ppm))
        if self._slewing is not None:
            # Keep slewing what is left, on top of the new frequency.
            left = self._end_fast(hand_over=False)
            self._base_ppm = ppm
            self._start_fast(left)
            return
        self._base_ppm = ppm
        self._set_rate(ppm, self.nominal_tick_us)

    def frequency(self) -> float:
        if self._base_ppm is not None:
            return self._base_ppm
        return self.read().frequency_ppm

    # --- the fast slew ----------------------------------------------------------------------

    def _singleshot(self, offset: float) -> None:
        tx = Timex()
        tx.modes = ADJ_OFFSET_SINGLESHOT
        tx.offset = round(offset * 1e6)  # singleshot offsets are always microseconds
        self._call(tx)

    def _set_rate(self, ppm: float, tick_us: int) -> None:
        status = self.read().status
        tx = Timex()
        tx.modes = ADJ_FREQUENCY | ADJ_STATUS | ADJ_TICK
        tx.freq = round(ppm * FREQ_SCALE)
        tx.tick = tick_us
        tx.status = status & ~(STA_PLL | STA_FLL | STA_PPSFREQ | STA_PPSTIME)
        self._call(tx)

    def _start_fast(self, offset: float) -> None:
        assert self._fast is not None
        if self._base_ppm is None:
            self._base_ppm = self.read().frequency_ppm
        if offset == 0.0:
            return
        # One µs of tick is 100 PPM (at 100 ticks/s); the kernel's frequency word does the rest.
        per_tick = 1e6 / self.nominal_tick_us
        total = self._base_ppm + math.copysign(self._fast * 1e6, offset)
        delta = round(total / per_tick)
        rest = total - delta * per_tick
        self._set_rate(rest, self.nominal_tick_us + delta)
        rate = abs(delta * per_tick + rest - self._base_ppm) * 1e-6
        self._slewing = (offset, self._raw_ns(), rate)

    def _end_fast(self, *, hand_over: bool = True) -> float:
        """Put tick and frequency back; return (and with ``hand_over`` give the kernel's
        singleshot slew) what is left of the target, which is negative after an overrun."""
        assert self._slewing is not None and self._base_ppm is not None
        target, start, rate = self._slewing
        self._set_rate(self._base_ppm, self.nominal_tick_us)
        elapsed = max(0, self._raw_ns() - start) / NS_PER_S
        self._slewing = None
        left = target - math.copysign(rate * elapsed, target)
        if hand_over:
            self._singleshot(left)
        return left

    # --- kernel discipline extras -------------------------------------------------------------

    def read(self) -> KernelTime:
        """Read the kernel's state: adjtimex with modes = 0 changes nothing."""
        tx = Timex()
        tx.modes = 0
        state = self._raw(tx)
        return _state(state, tx)

    def set_leap(self, leap: int) -> None:
        """Arm STA_INS / STA_DEL for the coming midnight, or clear both."""
        bits = {LEAP_NONE: 0, LEAP_INSERT: STA_INS, LEAP_DELETE: STA_DEL}.get(leap)
        if bits is None:
            raise ValueError(f"bad leap value {leap}")
        status = self.read().status
        if status & (STA_INS | STA_DEL) == bits:
            return
        tx = Timex()
        tx.modes = ADJ_STATUS
        tx.status = (status & ~(STA_INS | STA_DEL)) | bits
        self._call(tx)

    def set_sync(self, synchronized: bool, maxerror: float, esterror: float) -> None:
        """Tell the kernel (and so the RTC sync and other programs) how good the time is."""
        status = self.read().status
        tx = Timex()
        tx.modes = ADJ_STATUS | ADJ_MAXERROR | ADJ_ESTERROR
        tx.status = status & ~STA_UNSYNC if synchronized else status | STA_UNSYNC
        tx.maxerror = min(16_000_000, max(0, round(maxerror * 1e6)))
        tx.esterror = min(16_000_000, max(0, round(esterror * 1e6)))
        self._call(tx)

    def set_tai(self, tai_offset: int) -> None:
        tx = Timex()
        tx.modes = ADJ_TAI
        tx.constant = int(tai_offset)
        self._call(tx)

    def kernel_pll_update(self, offset: float, time_constant: int) -> None:
        """``enable kernel``: hand the offset to the kernel PLL (ns resolution) instead."""
        status = self.read().status
        tx = Timex()
        tx.modes = ADJ_OFFSET | ADJ_STATUS | ADJ_TIMECONST | ADJ_NANO
        tx.offset = max(-500_000_000, min(500_000_000, round(offset * NS_PER_S)))
        tx.status = (status | STA_PLL | STA_NANO) & ~STA_UNSYNC
        tx.constant = max(0, min(10, time_constant))
        self._call(tx)

    def set_kernel_pps(self, enabled: bool) -> None:
        """Kernel PPS discipline (PPS driver ``flag3``; the PPS device must be bound first).

        Turning it off also drops the phase correction the PPS loop left in the kernel PLL
        (ADJ_OFFSET 0 while STA_PLL is still set), so it does not keep moving the clock under
        the daemon's own loop; STA_PLL itself stays as it was (``set_frequency`` clears it).
        """
        status = self.read().status
        pps = STA_PPSTIME | STA_PPSFREQ
        tx = Timex()
        if enabled:
            tx.modes = ADJ_STATUS | ADJ_NANO  # PPS jitter and PLL offset then read in ns
            tx.status = status | pps | STA_PLL | STA_NANO
        else:
            # The kernel applies the status word before the offset, so PLL must stay on here.
            tx.modes = ADJ_STATUS | ADJ_OFFSET | ADJ_NANO
            tx.offset = 0
            tx.status = status & ~pps
        self._call(tx)

    # --- plumbing -----------------------------------------------------------------------------

    def _call(self, tx: Timex) -> int:
        if not self._adjust:
            raise PermissionError("this clock is read-only (--no-discipline or not enabled)")
        return self._raw(tx)

    def _raw(self, tx: Timex) -> int:
        rc = self._fn(ctypes.byref(tx))
        if rc < 0:
            err = ctypes.get_errno() or errno.EINVAL
            raise OSError(err, f"adjtimex(modes={tx.modes:#x}): {os.strerror(err)}")
        return rc


def _state(rc: int, tx: Timex) -> KernelTime:
    nano = bool(tx.status & STA_NANO)
    return KernelTime(
        state=rc,
        status=tx.status,
        offset_ns=tx.offset if nano else tx.offset * 1000,
        frequency_ppm=tx.freq / FREQ_SCALE,
        maxerror_us=tx.maxerror,
        esterror_us=tx.esterror,
        constant=tx.constant,
        precision_ns=tx.precision if nano else tx.precision * 1000,
        tick_us=tx.tick,
        tai=tx.tai,
        pps_frequency_ppm=tx.ppsfreq / FREQ_SCALE,
        pps_jitter_ns=tx.jitter if nano else tx.jitter * 1000,
        pps_stability_ppm=tx.stabil / FREQ_SCALE,
        pps_jitter_count=tx.jitcnt,
        pps_calibrations=tx.calcnt,
        pps_errors=tx.errcnt,
        pps_stability_count=tx.stbcnt,
    )
