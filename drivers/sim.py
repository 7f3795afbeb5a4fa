"""SIM (type 99): a simulated NMEA + PPS receiver for the demo and the tests.

True time is the given Clock's time plus a configured offset. Each true second the receiver
emits a PPS edge (the local time of the edge, with gaussian jitter) and, ``delay`` seconds
later, an RMC sentence naming that second. Outages (silence, or the device vanishing) can be
scheduled. Parameters come from the ``path`` option as ``key=value`` pairs (docs/drivers/sim.md).
"""

from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass, fields
from typing import Any

from stratum1.ntptime import NS_PER_S
from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register
from stratum1.sample import LEAP_NONE, LEAP_NOTINSYNC, Sample


@dataclass(frozen=True)
class SimParams:
    """What the simulated receiver does; every time in seconds."""

    offset: float = 0.0  # true time minus the clock's time
    jitter: float = 20e-6  # sigma of the PPS edge timestamps
    delay: float = 0.15  # arrival of the serial time code after its second
    serial_jitter: float = 0.005  # sigma of that arrival
    outage_every: float = 0.0  # an outage starts every this many true seconds (0: never)
    outage_length: float = 0.0  # and lasts this long
    unplug: bool = False  # during an outage the device is gone, not just silent
    fix_after: float = 0.0  # no fix (status V, not in sync) for this long after each open
    seed: int | None = None  # random seed (default: the unit number)

    @classmethod
    def parse(cls, text: str | None) -> SimParams:
        """``"offset=0.002,jitter=1e-5,outage_every=600,outage_length=30,unplug=1"``; an
        optional ``sim:`` prefix is ignored. Raises ValueError naming the bad item."""
        if not text:
            return cls()
        if text.startswith("sim:"):
            text = text[4:]
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(
                    f"sim parameter {item!r}: expected key=value with key one of "
                    + ", ".join(known)
                )
            try:
                if key == "unplug":
                    values[key] = _parse_bool(raw)
                elif key == "seed":
                    values[key] = int(raw)
                else:
                    values[key] = float(raw)
            except ValueError:
                raise ValueError(f"sim parameter {key}: bad value {raw.strip()!r}") from None
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        for name in ("jitter", "serial_jitter", "outage_every", "outage_length", "fix_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"sim parameter {name} must not be negative")
        if not 0.0 <= self.delay < 0.9:
            raise ValueError("sim parameter delay must be within [0, 0.9) s")
        if self.outage_every and self.outage_length >= self.outage_every:
            raise ValueError("sim parameter outage_length must be shorter than outage_every")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(raw)


def nmea_checksum(body: str) -> str:
    """The two hex digits of an NMEA checksum (XOR of the characters between $ and *)."""
    x = 0
    for ch in body.encode("ascii"):
        x ^= ch
    return f"{x:02X}"


def rmc_sentence(true_ns: int, valid: bool) -> str:
    """A $GPRMC sentence for the whole second ``true_ns`` (a fixed position near Braunschweig)."""
    t = time.gmtime(true_ns // NS_PER_S)
    body = (
        f"GPRMC,{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}.00,{'A' if valid else 'V'},"
        f"5217.0000,N,01031.0000,E,0.0,0.0,{t.tm_mday:02d}{t.tm_mon:02d}{t.tm_year % 100:02d},,,"
        f"{'A' if valid else 'N'}"
    )
    return f"${body}*{nmea_checksum(body)}"


@register
class SimDriver(RefclockDriver):
    type = 99
    name = "sim"
    ntpq_name = "SIM"
    description = "Simulated NMEA + PPS receiver (demo and tests)"
    refid = "SIM"
    precision = -9
    pps_precision = -20
    poll = 4
    max_unit = 255
    sample_fudge = "time2"
    options = frozenset({"path"})
    fudge_meanings = {
        "time1": "PPS offset, seconds",
        "time2": "serial time-code offset (the configured delay compensates it), seconds",
        "flag1": "emit PPS pulses (like the NMEA driver's flag1)",
        "flag2": "PPS only: no serial time codes (pulses numbered by the system clock)",
    }

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.params = SimParams()
        self._timer: Any = None
        self._opened_ns = 0
        self._rng = random.Random()
        self._seconds = 0
        self._outage = False

    def open(self) -> None:
        self.params = SimParams.parse(self.config.path)
        seed = self.config.unit if self.params.seed is None else self.params.seed
        self._rng = random.Random(seed)
        now = self.ctx.clock.now_ns()
        if self.params.unplug and self._in_outage(now + self._offset_ns()):
            raise OSError(errno.ENODEV, "simulated receiver unplugged", self.config.path or "sim")
        self._opened_ns = now
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> dict[str, Any]:
        p = self.params
        return {
            "device": f"(simulated, offset {p.offset:+.6f} s, jitter {p.jitter:.1e} s)",
            "seconds": self._seconds,
            "outage": self._outage,
            "pps": self.flag(1),
        }

    # -- the simulated receiver ---------------------------------------------------------------
    def _offset_ns(self) -> int:
        return round(self.params.offset * NS_PER_S)

    def _in_outage(self, true_ns: int) -> bool:
        p = self.params
        if not p.outage_every or not p.outage_length:
            return False
        phase = (true_ns % round(p.outage_every * NS_PER_S)) / NS_PER_S
        return phase < p.outage_length

    def _schedule(self) -> None:
        """Wake when the serial time code of the next true second is due."""
        now = self.ctx.clock.now_ns()
        true_now = now + self._offset_ns()
        delay_ns = round(self.params.delay * NS_PER_S)
        second = (true_now - delay_ns) // NS_PER_S * NS_PER_S + NS_PER_S
        due_local = second + delay_ns - self._offset_ns()
        self._next_second = second
        self._timer = self.ctx.loop.call_later(max(0, due_local - now) / NS_PER_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        second = self._next_second
        p = self.params
        self._outage = self._in_outage(second)
        if self._outage and p.unplug:
            self.ctx.report_fault("simulated receiver unplugged")
            return
        if not self._outage:
            self._emit(second)
        self._schedule()

    def _emit(self, second: int) -> None:
        p = self.params
        self._seconds += 1
        edge_local = second - self._offset_ns() + round(self._rng.gauss(0.0, p.jitter) * NS_PER_S)
        if self.flag(1):
            self.ctx.add_pulse(edge_local)
        if self.flag(2) and self.flag(1):
            return
        lag = max(0.0, p.delay + self._rng.gauss(0.0, p.serial_jitter))  # never before the edge
        arrival = second - self._offset_ns() + round(lag * NS_PER_S)
        valid = self.ctx.clock.now_ns() - self._opened_ns >= round(p.fix_after * NS_PER_S)
        self.ctx.add_sample(Sample(arrival, second, LEAP_NONE if valid else LEAP_NOTINSYNC))
        self.ctx.log_timecode(rmc_sentence(second, valid))
