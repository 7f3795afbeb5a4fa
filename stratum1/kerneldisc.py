"""Kernel PPS discipline (``enable kernel`` with the PPS driver's ``flag3``): hands phase and
frequency to the kernel's hardpps loop while it is locked, and takes them back when it is not.

When it is used: only when ``enable kernel`` is in effect (ntpd's default), a PPS unit bound the
kernel hardpps consumer to its device (``flag3``), the clock may be adjusted, our own loop has
held the system offset within ``arm_max_offset`` for a few updates, and the kernel sees clean
pulses (STA_PPSSIGNAL set, no STA_PPSJITTER/WANDER/ERROR). In every other case, including
``enable kernel`` without a bound PPS, our own loop (``stratum1.discipline``) steers: its
Kalman bank beats the kernel PLL for network and serial sources, while for a PPS edge stamped
in the kernel the hardpps loop works from the interrupt itself, which nothing in user space
can improve on. ``disable kernel`` always means our own loop.

Sans-I/O like the Discipline it extends: "now" and the kernel's state come in through calls
(``update``, ``tick``, ``set_hardpps``); the clock object (``KernelClock`` or a fake) is the only
thing it acts on.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .discipline import KERNEL, SLEW, Discipline, DisciplineResult
from .ntptime import NS_PER_S
from .sysclock import (
    STA_CLOCKERR,
    STA_PPSERROR,
    STA_PPSFREQ,
    STA_PPSJITTER,
    STA_PPSSIGNAL,
    STA_PPSTIME,
    STA_PPSWANDER,
    KernelTime,
)

log = logging.getLogger("stratum1.kernel")

#: Our loop must have the clock this close (s) before the kernel PPS loop takes over: the
#: pulse says nothing about which second it is, and the kernel corrects phase modulo 1 s.
ARM_MAX_OFFSET = 0.001
#: ... for this many updates in a row, so that the frequency handed over is settled too.
ARM_GOOD_UPDATES = 4
#: Consecutive once-a-second checks with a per-pulse error bit before we take over again
#: (one popcorn pulse sets STA_PPSJITTER until the next good pulse clears it).
FALLBACK_BAD_CHECKS = 3
#: Wait this long (s) after a fallback before handing over again; doubled on each fallback
#: that follows a short lock, up to the maximum, so a flaky PPS cannot make the loops flap.
HOLDOFF_MIN_S = 64
HOLDOFF_MAX_S = 1024
#: A lock that lasted this long (s) counts as stable: the next fallback waits the minimum.
STABLE_LOCK_S = 1024
#: The kernel's maxerror/esterror/STA_UNSYNC are refreshed at least this often (s).
SYNC_REFRESH_S = 16
#: What a fallback assumes the kernel's frequency is worth (PPM) as a prior for our loop.
HANDOVER_SIGMA_PPM = 0.05

MODE_DAEMON = "daemon"
MODE_HARDPPS = "hardpps"


def pps_problem(kt: KernelTime) -> tuple[str, bool] | None:
    """What stops the kernel PPS loop from being trusted, and whether it is fatal at once
    (no signal, clock fault) rather than per pulse; None when the pulses are clean."""
    status = kt.status
    if not status & STA_PPSSIGNAL:
        return "no PPS signal in the kernel (STA_PPSSIGNAL clear)", True
    if status & STA_CLOCKERR:
        return "clock hardware fault (STA_CLOCKERR)", True
    if status & STA_PPSERROR:
        return "PPS calibration error (STA_PPSERROR)", False
    if status & STA_PPSWANDER:
        return "PPS frequency wander (STA_PPSWANDER)", False
    if status & STA_PPSJITTER:
        return "PPS jitter (STA_PPSJITTER)", False
    return None


def wants_kernel(enabled: Any) -> bool:
    """``enable kernel`` (the default) or ``disable kernel``, from ``Config.enabled``."""
    return "kernel" in enabled


class KernelDiscipline(Discipline):
    """The Discipline, plus hand-over to the kernel hardpps loop (see the module docstring).

    While the kernel PPS loop is locked, ``update`` only measures: no slew, step or frequency
    call of ours reaches the clock, and results carry the action ``"kernel"``. Frequency,
    jitter and wander are then the kernel's (what ntpd shows in loopstats in that mode).
    """

    def __init__(
        self,
        clock: Any,
        *,
        kernel: bool = True,
        arm_max_offset: float = ARM_MAX_OFFSET,
        **kwargs: Any,
    ) -> None:
        super().__init__(clock, **kwargs)
        if arm_max_offset <= 0:
            raise ValueError("arm_max_offset must be positive")
        self.kernel_enabled = kernel
        self.arm_max_offset = arm_max_offset
        self._good = 0
        self.hardpps_bound = False
        self.locked = False
        self.reason = "" if kernel else "disable kernel"
        self.engagements = 0
        self.releases = 0
        self.last_kernel: KernelTime | None = None
        self._bad = 0
        self._last_check_ns: int | None = None
        self._holdoff_s = 0
        self._holdoff_until: int | None = None
        self._locked_since: int | None = None
        self._sync_state: bool | None = None
        self._sync_at: int | None = None
        self._sync_failed = False

    # --- configuration ----------------------------------------------------------------------

    @property
    def kernel_capable(self) -> bool:
        """The clock is adjustable and has the kernel PPS calls (KernelClock, or a fake)."""
        clock = self._clock
        return bool(clock.can_adjust) and all(
            callable(getattr(clock, name, None)) for name in ("read", "set_kernel_pps")
        )

    @property
    def mode(self) -> str:
        return MODE_HARDPPS if self.locked else MODE_DAEMON

    def set_hardpps(self, bound: bool, now_ns: int) -> None:
        """Whether a PPS unit has the kernel hardpps consumer bound (its ``status()["hardpps"]``)."""
        bound = bool(bound)
        if bound == self.hardpps_bound:
            return
        self.hardpps_bound = bound
        if not bound and self.locked:
            self._release(now_ns, "the PPS device is no longer bound (flag3)")

    def set_kernel(self, enabled: bool, now_ns: int) -> None:
        """``enable kernel`` / ``disable kernel`` changed (a reload)."""
        self.kernel_enabled = bool(enabled)
        if not enabled:
            if self.locked:
                self._release(now_ns, "disable kernel")
            self.reason = "disable kernel"
        elif self.reason == "disable kernel":
            self.reason = ""

    def wanted(self) -> bool:
        """Kernel PPS is allowed here: enable kernel, a bound PPS, a clock we may adjust."""
        return self.kernel_enabled and self.hardpps_bound and self.kernel_capable

    # --- the loop ---------------------------------------------------------------------------

    def update(
        self,
        offset: float,
        jitter: float,
        now_ns: int,
        *,
        poll: int,
        sample_ns: int | None = None,
        span_ns: int = 0,
        delay: float | None = None,
    ) -> DisciplineResult:
        if not math.isfinite(offset) or not math.isfinite(jitter):
            raise ValueError("offset and jitter must be finite")
        if self.locked:
            self._check(now_ns)
        if self.locked:
            if self.step_threshold > 0 and abs(offset) > self.step_threshold:
                # The kernel corrects phase modulo one second: a large offset is ours to handle.
                self._release(now_ns, f"offset {offset:+.6f} s is beyond the step threshold")
            else:
                return self._observe(offset, jitter, poll)
        result = super().update(
            offset, jitter, now_ns, poll=poll, sample_ns=sample_ns, span_ns=span_ns, delay=delay
        )
        if result.action == SLEW and abs(offset) <= self.arm_max_offset:
            self._good += 1
        else:
            self._good = 0
        if result.action == SLEW:
            self._maybe_engage(offset, now_ns)
        return result

    def add_history(
        self, offset: float, jitter: float, sample_ns: int, *, span_ns: int = 0
    ) -> bool:
        if self.locked:
            return False  # the kernel's loop steers: our estimate restarts when it lets go
        return super().add_history(offset, jitter, sample_ns, span_ns=span_ns)

    def offset_change(self, since_ns: int, now_ns: int) -> float:
        """As the Discipline's, except that while the kernel PPS loop is locked it holds the
        phase: offsets measured since it took over have not moved."""
        if self.locked and self._locked_since is not None:
            if since_ns >= self._locked_since:
                return 0.0
            now_ns = min(now_ns, self._locked_since)
        return super().offset_change(since_ns, now_ns)

    def tick(self, now_ns: int, snapshot: Any = None) -> None:
        """Once a second: watch the kernel PPS status bits while locked and, given the system
        snapshot, keep the kernel's STA_UNSYNC, maxerror and esterror current (what
        ``timedatectl``, the RTC sync and other programs read). Also ends a fast slew that
        is overdue (a backstop: the daemon's own timer ends it on time)."""
        self.service_slew()
        if self.locked:
            self._check(now_ns)
        if snapshot is not None:
            self._report_sync(snapshot, now_ns)

    def service_slew(self, *, force: bool = False) -> float | None:
        """The clock's ``service_slew`` (fast slews through the tick length; see
        ``KernelClock``): ends one that is due, returns the seconds left, None if none."""
        service = getattr(self._clock, "service_slew", None)
        if service is None or not self._clock.can_adjust:
            return None
        return service(force=force)

    def close(self, now_ns: int) -> None:
        """On exit: leave the kernel without PPS discipline (our loop's frequency stays) and
        with its nominal tick (a fast slew in progress is cut short)."""
        self.service_slew(force=True)
        if self.locked:
            self._release(now_ns, "exiting")

    def status(self) -> dict[str, Any]:
        """For ``stratum1 status``, logs and ntpq: who steers the clock and why."""
        st: dict[str, Any] = {
            "mode": self.mode,
            "kernel": self.kernel_enabled,
            "hardpps_bound": self.hardpps_bound,
            "engagements": self.engagements,
            "releases": self.releases,
        }
        if self.reason:
            st["reason"] = self.reason
        if self._holdoff_until is not None and not self.locked:
            st["holdoff_until_ns"] = self._holdoff_until
        kt = self.last_kernel
        if kt is not None:
            st["kernel_status"] = kt.status_text
            st["pps_jitter"] = kt.pps_jitter_ns / NS_PER_S
            st["pps_frequency_ppm"] = kt.pps_frequency_ppm
            st["pps_errors"] = kt.pps_errors
            st["pps_jitter_count"] = kt.pps_jitter_count
        return st

    # --- internals --------------------------------------------------------------------------

    def _read(self) -> KernelTime | None:
        try:
            kt = self._clock.read()
        except OSError as exc:
            log.error("adjtimex read failed: %s", exc)
            return None
        self.last_kernel = kt
        return kt

    def _check(self, now_ns: int) -> None:
        kt = self._read()
        if kt is None:
            self._release(now_ns, "cannot read the kernel's clock state")
            return
        if kt.status & (STA_PPSTIME | STA_PPSFREQ) != STA_PPSTIME | STA_PPSFREQ:
            self._release(now_ns, "STA_PPSTIME/STA_PPSFREQ were cleared by another program")
            return
        problem = pps_problem(kt)
        if problem is None:
            self._bad = 0
            change = kt.frequency_ppm - self._freq_ppm
            self._wander = math.sqrt((self._wander**2 * 7 + change * change) / 8)
            self.follow_external(now_ns, kt.frequency_ppm)
            self._freq_sigma_ppm = max(kt.pps_stability_ppm, 0.001)
            self._jitter = kt.pps_jitter_ns / NS_PER_S
            return
        why, fatal = problem
        # update() and tick() may both look within one second: count one bad pulse once.
        fresh = self._last_check_ns is None or now_ns - self._last_check_ns >= NS_PER_S * 9 // 10
        if fresh:
            self._last_check_ns = now_ns
            self._bad += 1
        if fatal or self._bad >= FALLBACK_BAD_CHECKS:
            self._release(now_ns, why)

    def _observe(self, offset: float, jitter: float, poll: int) -> DisciplineResult:
        self.updates += 1
        self.last_offset = offset
        self._set = True
        self._spike_since = None
        self._adapt_poll(offset, max(jitter, self._jitter, 1e-9), poll)
        return DisciplineResult(KERNEL, offset, self._freq_ppm, self._poll, self._jitter, 0)

    def _maybe_engage(self, offset: float, now_ns: int) -> None:
        if self.locked or not self.wanted():
            return
        if self._holdoff_until is not None and now_ns < self._holdoff_until:
            return
        if self._good < ARM_GOOD_UPDATES:
            self.reason = (f"waiting: offset {offset:+.6f} s; {ARM_GOOD_UPDATES} in a row within"
                           f" {self.arm_max_offset:g} s needed")
            return
        kt = self._read()
        if kt is None:
            return
        problem = pps_problem(kt)
        if problem is not None:
            self.reason = f"waiting: {problem[0]}"
            return
        try:
            self._clock.slew(0.0)  # a slew of ours still running would fight the PPS loop
            self._clock.set_kernel_pps(True)
        except OSError as exc:
            self._hold_off(now_ns, short=False)
            self.reason = f"cannot enable kernel PPS: {exc}"
            log.error("%s", self.reason)
            return
        self.follow_external(now_ns, kt.frequency_ppm)
        self.locked = True
        self._locked_since = now_ns
        self._bad = 0
        self._last_check_ns = None
        self.engagements += 1
        self.reason = ""
        log.info("kernel PPS discipline engaged (hardpps): the kernel steers phase and frequency"
                 " from the pulses, %.3f PPM", kt.frequency_ppm)

    def _release(self, now_ns: int, why: str) -> None:
        kt = self._read()
        freq = kt.frequency_ppm if kt is not None else self._freq_ppm
        try:
            self._clock.set_kernel_pps(False)
        except OSError as exc:
            log.error("cannot turn kernel PPS discipline off: %s", exc)
        was_stable = (
            self._locked_since is not None
            and (now_ns - self._locked_since) >= STABLE_LOCK_S * NS_PER_S
        )
        self.locked = False
        self._locked_since = None
        self._bad = 0
        self._good = 0
        self.releases += 1
        self.reason = why
        self._hold_off(now_ns, short=was_stable)
        self.take_over(now_ns, freq, HANDOVER_SIGMA_PPM)
        log.warning("kernel PPS discipline released: %s; our own loop steers from %.3f PPM,"
                    " kernel PPS again in %d s at the earliest", why, freq, self._holdoff_s)

    def _hold_off(self, now_ns: int, *, short: bool) -> None:
        if short or self._holdoff_s == 0:
            self._holdoff_s = HOLDOFF_MIN_S
        else:
            self._holdoff_s = min(self._holdoff_s * 2, HOLDOFF_MAX_S)
        self._holdoff_until = now_ns + self._holdoff_s * NS_PER_S

    def _report_sync(self, snapshot: Any, now_ns: int) -> None:
        clock = self._clock
        if not clock.can_adjust or not callable(getattr(clock, "set_sync", None)):
            return
        synced = bool(snapshot.synchronized)
        due = self._sync_at is None or now_ns - self._sync_at >= SYNC_REFRESH_S * NS_PER_S
        if synced == self._sync_state and not due:
            return
        maxerror = snapshot.root_delay / 2 + snapshot.root_dispersion if synced else 16.0
        esterror = max(self._jitter, 0.0) if synced else 16.0
        try:
            clock.set_sync(synced, maxerror, esterror)
        except OSError as exc:
            if not self._sync_failed:
                log.error("cannot tell the kernel the clock state: %s", exc)
            self._sync_failed = True
            return
        self._sync_failed = False
        self._sync_state = synced
        self._sync_at = now_ns
