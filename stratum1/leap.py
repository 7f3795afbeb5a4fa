"""Leap-second scheduling: what to announce, when to arm the kernel, when to hold the clock.

Sans-I/O: a table (from the leap file) or the votes of the surviving sources and "now" in; a
LeapDecision out. The leap file wins over votes; without it, a majority of survivors announcing
a leap schedules one at the end of the current UTC month, as ntpd does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from .leapfile import LeapTable
from .ntptime import NS_PER_S
from .sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE

#: The leap warning bits are set this long before the leap (ntpd: 28 days).
WARN_NS = 28 * 86_400 * NS_PER_S
#: The kernel is armed in the last 23 hours (ntpd), i.e. on the day of the leap.
ARM_NS = 23 * 3600 * NS_PER_S


@dataclass(frozen=True, slots=True)
class LeapDecision:
    indicator: int  # LEAP_NONE / LEAP_INSERT / LEAP_DELETE for served packets now
    kernel: int  # what the kernel should be armed with now (kernel mode only)
    hold_step_ns: int  # kernel off: step the clock by this now (-1 s insert, +1 s delete), else 0
    leap_ns: int | None  # Unix ns at which the new TAI-UTC applies (00:00:00 after the leap)
    tai_offset: int | None  # TAI - UTC now, when known from the table
    source: str  # "file", "vote" or "" (none scheduled)


def end_of_month_ns(now_ns: int) -> int:
    """00:00:00 UTC on the first day of the next month (the leap instant of a month's end)."""
    d = dt.datetime.fromtimestamp(now_ns // NS_PER_S, dt.UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()) * NS_PER_S


class LeapScheduler:
    """Decides, at each call, the leap bits and actions for "now".

    ``kernel`` says whether the kernel discipline handles the leap (armed with STA_INS/STA_DEL
    on the last day); otherwise the caller steps the clock by ``hold_step_ns`` when asked (the
    clock is held for the inserted second) and tells the Discipline through ``notify_leap``.
    """

    def __init__(self, *, kernel: bool, table: LeapTable | None = None) -> None:
        self.kernel = kernel
        self.table = table
        self._vote: tuple[int, int] | None = None  # (leap_ns, +1/-1)
        self._done_ns: int | None = None  # leap instant already performed by a hold step

    def set_table(self, table: LeapTable | None) -> None:
        self.table = table

    def vote(self, leaps: Sequence[int], now_ns: int) -> None:
        """The leap bits of the surviving sources: a majority schedules the end of this month."""
        if not leaps:
            return
        n = len(leaps)
        ins = sum(1 for x in leaps if x == LEAP_INSERT)
        dele = sum(1 for x in leaps if x == LEAP_DELETE)
        if 2 * ins > n:
            self._vote = (end_of_month_ns(now_ns), 1)
        elif 2 * dele > n:
            self._vote = (end_of_month_ns(now_ns), -1)
        elif self._vote is not None and self._done_ns != self._vote[0]:
            self._vote = None  # the announcement went away before the leap: cancelled

    def _scheduled(self, now_ns: int) -> tuple[int, int, str] | None:
        # Look from just before the second in question, so a performed leap is still "next"
        # while the repeated second runs.
        probe = now_ns - 2 * NS_PER_S
        if self.table is not None:
            nxt = self.table.next_leap(probe)
            if nxt is not None and nxt[0] - probe <= WARN_NS + 2 * NS_PER_S:
                return nxt[0], nxt[1], "file"
            if nxt is not None or not self.table.expired(now_ns):
                return None  # the file covers now and says no leap is due
        if self._vote is not None and self._vote[0] > probe:
            return self._vote[0], self._vote[1], "vote"
        return None

    def update(self, now_ns: int) -> LeapDecision:
        tai = self.table.tai_offset(now_ns) if self.table is not None else None
        sched = self._scheduled(now_ns)
        if sched is None:
            return LeapDecision(LEAP_NONE, LEAP_NONE, 0, None, tai, "")
        leap_ns, sign, source = sched
        bits = LEAP_INSERT if sign > 0 else LEAP_DELETE
        done = self._done_ns == leap_ns
        if sign > 0:
            # The inserted second is the repeat of [leap-1 s, leap): after a hold step the
            # clock reads that second again, and the warning stays up until it ends.
            if now_ns >= leap_ns and (done or self.kernel):
                return LeapDecision(LEAP_NONE, LEAP_NONE, 0, leap_ns, tai, source)
            hold_at = leap_ns
        else:
            # A deleted second: 23:59:59 never happens; jump from 23:59:58.999 to 00:00:00.
            if now_ns >= leap_ns:
                return LeapDecision(LEAP_NONE, LEAP_NONE, 0, leap_ns, tai, source)
            hold_at = leap_ns - NS_PER_S
        if not self.kernel and not done and now_ns >= hold_at:
            self._done_ns = leap_ns
            step = -NS_PER_S if sign > 0 else NS_PER_S
            return LeapDecision(bits, LEAP_NONE, step, leap_ns, tai, source)
        armed = bits if self.kernel and leap_ns - now_ns <= ARM_NS else LEAP_NONE
        return LeapDecision(bits, armed, 0, leap_ns, tai, source)
