"""SHM (type 28): samples another program (gpsd, ptp tools) writes into the NTP shm segment.

Once a second the driver takes the segment's sample by ntpd's count/valid protocol and checks
it the way ntpd does (fresh, within time2 of the clock unless flag1); the segment's own
precision and leap indicator travel with the sample.
"""

from __future__ import annotations

from typing import Any

from stratum1.hw import shm as hwshm

from stratum1.ntptime import NS_PER_S
from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register
from stratum1.sample import Sample

#: How often the segment is read (ntpd: every second).
READ_INTERVAL_S = 1.0
#: A sample whose receive time is more than this many whole seconds old is stale (ntpd: 5).
MAX_AGE_S = 5
#: ntpd's default and bounds for time2, the largest |clock - receive| accepted, seconds.
DEFAULT_MAX_DIFF_S = 14400.0
MIN_MAX_DIFF_S = 1.0
MAX_MAX_DIFF_S = 86400.0


def segment_perm(unit: int, mode: int | None) -> int:
    """Units 0 and 1 are private (only root's gpsd may write them); others are world-writable
    unless mode bit 0 asks for a private segment."""
    if unit <= 1 or (mode or 0) & 1:
        return 0o600
    return 0o666


def max_difference_s(time2: float | None) -> float:
    if time2 is None or not MIN_MAX_DIFF_S <= time2 <= MAX_MAX_DIFF_S:
        return DEFAULT_MAX_DIFF_S
    return time2


@register
class ShmDriver(RefclockDriver):
    type = 28
    name = "shm"
    ntpq_name = "SHM"
    description = "Shared memory segment written by gpsd or another time source"
    refid = "SHM"
    precision = -1
    max_unit = 255
    mode_range = (0, 1)
    options = frozenset({"mode"})
    requires = ("sysv-shm",)
    fudge_meanings = {
        "time1": "offset added to the segment's samples, seconds",
        "time2": "largest accepted |clock - receive| difference, seconds (default 4 h)",
        "flag1": "skip the difference check (allow a large first step)",
        "flag4": "write ticks/good/notready/bad/clash counts to clockstats each poll",
    }

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.segment: hwshm.ShmSegment | None = None
        self._timer: Any = None
        #: ntpd's counters: totals since open, and the ones since the last poll.
        self.totals = dict.fromkeys(("ticks", "good", "notready", "bad", "clash"), 0)
        self._poll = dict(self.totals)
        self.last_reason = ""
        self.last_precision: int | None = None

    @property
    def key(self) -> int:
        return hwshm.shm_key(self.config.unit)

    def open(self) -> None:
        if self.segment is not None:
            return
        seg = hwshm.ShmSegment(self.key, segment_perm(self.config.unit, self.config.mode))
        seg.open()
        seg.init_reader()
        self.segment = seg
        self._timer = self.ctx.loop.call_every(READ_INTERVAL_S, self.read)

    def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        seg, self.segment = self.segment, None
        if seg is not None:
            seg.close()  # the segment stays for the writer, as ntpd leaves it

    def _bump(self, name: str) -> None:
        self.totals[name] += 1
        self._poll[name] += 1

    def _reject(self, kind: str, reason: str, counter: str) -> None:
        self._bump(kind)
        self.last_reason = reason
        self.ctx.count(counter)

    def read(self) -> None:
        """Timer tick: take the segment's sample if there is a new one."""
        seg = self.segment
        if seg is None:
            return
        self._bump("ticks")
        try:
            result = hwshm.read_sample(seg)
        except OSError as exc:
            self.ctx.report_fault(f"shm 0x{self.key:08x}: {exc}")
            return
        if result.status == hwshm.NOT_READY:
            self._bump("notready")
            return
        if result.status == hwshm.CLASH:
            self._reject("clash", "writer updated the segment while it was read", "clash")
            return
        data = result.data
        assert data is not None
        if result.status == hwshm.BAD_MODE:
            self._reject("bad", f"unknown segment mode {data.mode}", "badformat")
            return
        clock_ns, receive_ns = data.times_ns()
        now_ns = self.ctx.clock.now_ns()
        age_s = now_ns // NS_PER_S - receive_ns // NS_PER_S
        if not 0 <= age_s <= MAX_AGE_S:
            self._reject("bad", f"stale sample: received {age_s} s ago", "stale")
            return
        if data.leap not in (0, 1, 2, 3):
            self._reject("bad", f"bad leap indicator {data.leap}", "badformat")
            return
        limit = max_difference_s(self.config.time2)
        diff_s = abs(clock_ns - receive_ns) / NS_PER_S
        if diff_s > limit and not self.flag(1):
            self._reject("bad", f"|clock - receive| = {diff_s:.3f} s exceeds {limit:g} s (time2; flag1 skips)", "baddata")
            return
        self._bump("good")
        if -32 < data.precision <= 0:
            self.last_precision = data.precision
            self.ctx.set_precision(data.precision)
        self.ctx.add_sample(Sample(receive_ns, clock_ns, data.leap))

    def on_poll(self) -> None:
        if self.flag(4):
            p = self._poll
            self.ctx.log_timecode(f"{p['ticks']} {p['good']} {p['notready']} {p['bad']} {p['clash']}")
        self._poll = dict.fromkeys(self._poll, 0)

    def status(self) -> dict[str, Any]:
        seg = self.segment
        st: dict[str, Any] = {
            "device": f"shm key 0x{self.key:08x}",
            "perm": f"0{segment_perm(self.config.unit, self.config.mode):o}",
            **self.totals,
        }
        if seg is not None:
            st["size"] = seg.size
        if self.last_precision is not None:
            st["segment_precision"] = self.last_precision
        if self.last_reason:
            st["last_reject"] = self.last_reason
        return st
