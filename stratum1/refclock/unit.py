"""RefclockUnit: one configured refclock (127.127.t.u) at run time.

The unit owns a driver instance and does everything that is the same for every driver: opening
with retry and back-off, faults, the sample buffer, fudge offsets, PPS pulse numbering, the
per-poll median reduction, reach, stratum/refid overrides, clockstats and status counters.

The core calls, per association:

    unit.start()                      # once; never raises, never blocks on a dead device
    m = unit.poll(now_ns)             # each poll interval -> Measurement | None
    unit.stratum, unit.refid, unit.precision, unit.rootdisp, unit.prefer, unit.noselect
    unit.status(now_ns)               # plain dict for drivers list / ntpq cv / metrics
    unit.stop()

``pulse_reference(local_ns) -> true_ns | None`` numbers pulses when the unit has no recent time
code of its own: the daemon passes one that returns ``local_ns`` while the system clock is
synchronised (and None otherwise).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ntptime import NS_PER_S
from ..sample import LEAP_NONE, LEAP_NOTINSYNC, Measurement, Sample
from .backoff import Backoff
from .clockstats import clockstats_line
from .driver import RefclockDriver
from .filter import reduce_offsets
from .pulse import nearest_second
from .registry import lookup

if TYPE_CHECKING:
    from ..clock import Clock
    from ..config.model import RefclockConfig
    from ..eventloop import EventLoop, Timer

log = logging.getLogger(__name__)

PulseReference = Callable[[int], "int | None"]
ClockstatsSink = Callable[[str], None]

#: Samples kept between polls (a circular buffer: the oldest is overwritten).
MAX_SAMPLES = 64
#: A pulse pairs with the unit's time code only if they are this close (chrony's maxlockage).
MAX_LOCK_AGE_NS = 2 * NS_PER_S

# ntpd's clock event codes (CEVNT_*), shown by ntpq and drivers list.
EVENT_NOMINAL = 0
EVENT_TIMEOUT = 1
EVENT_BADREPLY = 2
EVENT_FAULT = 3
EVENT_PROP = 4
EVENT_BADDATE = 5
EVENT_BADTIME = 6
EVENT_TEXT = {
    0: "nominal",
    1: "no reply",
    2: "bad reply format",
    3: "hardware or software fault",
    4: "propagation failure",
    5: "bad date format or value",
    6: "bad time format or value",
}
_COUNTER_EVENT = {"badformat": EVENT_BADREPLY, "baddata": EVENT_BADTIME}

# Unit states.
CLOSED = "closed"
OPEN = "open"
FAULT = "fault"  # waiting for a retry (timer or hotplug)


@dataclass(frozen=True, slots=True)
class _Stored:
    local_ns: int
    offset: float  # s, fudge included
    leap: int


class _Context:
    """The DriverContext one driver instance sees. Bound to one open generation: once the unit
    has closed that instance, late calls (a callback still queued) are ignored."""

    def __init__(self, unit: RefclockUnit, generation: int) -> None:
        self._unit = unit
        self._gen = generation
        self.loop = unit.loop
        self.clock = unit.clock
        self.address = unit.address

    def _live(self) -> bool:
        if self._gen == self._unit._generation and self._unit.state == OPEN:
            return True
        self._unit._counters["stale_calls"] = self._unit._counters.get("stale_calls", 0) + 1
        return False

    def add_sample(self, sample: Sample, *, lock_only: bool = False) -> None:
        if self._live():
            self._unit._add_sample(sample, lock_only=lock_only)

    def add_pulse(self, local_ns: int) -> None:
        if self._live():
            self._unit._add_pulse(local_ns)

    def report_fault(self, message: str) -> None:
        if self._live():
            self._unit._fault(message)

    def log_timecode(self, timecode: str) -> None:
        if self._live():
            self._unit._log_timecode(timecode)

    def count(self, counter: str, n: int = 1) -> None:
        if self._live():
            self._unit._count(counter, n)

    def set_precision(self, precision: int) -> None:
        if self._live():
            self._unit._reported_precision = int(precision)


class RefclockUnit:
    """One refclock unit: a driver instance plus the framework's per-unit state."""

    def __init__(
        self,
        config: RefclockConfig,
        loop: EventLoop,
        clock: Clock,
        *,
        driver_cls: type[RefclockDriver] | None = None,
        pulse_reference: PulseReference | None = None,
        clockstats: ClockstatsSink | None = None,
        backoff: Backoff | None = None,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        cls = driver_cls or lookup(config.type) or lookup(config.driver or "")
        if cls is None:
            raise ValueError(f"no refclock driver for type {config.type} ({config.driver!r})")
        self.config = config
        self.driver_cls: type[RefclockDriver] = cls
        self.loop = loop
        self.clock = clock
        self.pulse_reference = pulse_reference
        self.clockstats = clockstats
        self.backoff = backoff or Backoff()
        self.address = f"127.127.{config.type}.{config.unit}"
        self.name = f"{cls.ntpq_name}({config.unit})"
        self.driver: RefclockDriver | None = None
        self.state = CLOSED
        self.reach = 0
        self.offset: float | None = None
        self.jitter: float | None = None
        self.pps_active = False
        self._generation = 0
        self._retry_timer: Timer | None = None
        self._retry_due_ns: int | None = None
        self._samples: deque[_Stored] = deque(maxlen=max_samples)
        self._pulses: deque[_Stored] = deque(maxlen=max_samples)
        self._lock: _Stored | None = None  # latest time code, for numbering pulses
        self._reported_precision: int | None = None
        self._counters: dict[str, int] = {}
        self._event = EVENT_NOMINAL
        self._timecode = ""
        self._timecode_ns: int | None = None
        self._timecode_logged = True
        self._last_sample_ns: int | None = None
        self._last_fault: str | None = None
        self._last_fault_ns: int | None = None
        self._got_sample_since_open = False

    # -- what the core reads ----------------------------------------------------------------
    @property
    def stratum(self) -> int:
        s = self.config.stratum
        return self.driver_cls.stratum if s is None else s

    @property
    def refid(self) -> str:
        r = self.config.refid
        return self.driver_cls.refid if r is None else r

    @property
    def precision(self) -> int:
        if self._reported_precision is not None:
            return self._reported_precision
        if self.pps_active and self.driver_cls.pps_precision is not None:
            return self.driver_cls.pps_precision
        return self.driver_cls.precision

    @property
    def rootdisp(self) -> float:
        return self.driver_cls.rootdisp

    @property
    def prefer(self) -> bool:
        return bool(self.config.prefer)

    @property
    def noselect(self) -> bool:
        return bool(self.config.noselect)

    @property
    def minpoll(self) -> int:
        p = self.config.minpoll
        return self.driver_cls.poll if p is None else p

    @property
    def maxpoll(self) -> int:
        p = self.config.maxpoll
        return self.minpoll if p is None else max(p, self.minpoll)

    def fudge(self, field: str) -> float:
        """time1 or time2 in seconds (0 when not set)."""
        value = getattr(self.config, field, None)
        return float(value) if value is not None else 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the driver now; on failure a retry is scheduled. Never raises."""
        if self.state == CLOSED:
            self._open()

    def stop(self) -> None:
        """Close the driver and cancel retries. Safe to call twice."""
        self._cancel_retry()
        self._close_driver()
        self.state = CLOSED

    def retry_now(self) -> None:
        """The device may be back (a udev add event): retry at once if waiting to reopen."""
        if self.state == FAULT:
            self._cancel_retry()
            self._open()

    def _open(self) -> None:
        self._generation += 1
        driver = self.driver_cls(self.config, _Context(self, self._generation))
        self.driver = driver
        self.state = OPEN  # the driver may add samples from within open()
        self._got_sample_since_open = False
        try:
            driver.open()
        except Exception as exc:  # any failure of a driver is its unit's fault, not the daemon's
            self._fault(f"open failed: {_describe(exc)}")
            return
        if self.driver is not driver:  # it reported a fault from within open()
            return
        self._count("opens")
        log.info("%s %s: open", self.address, self.name)

    def _fault(self, message: str) -> None:
        if self.state != OPEN:
            return
        self._last_fault = message
        self._last_fault_ns = self.clock.now_ns()
        self._event = EVENT_FAULT
        self._count("faults")
        self._close_driver()
        self.state = FAULT
        self._lock = None
        delay = self.backoff.next_delay()
        log.warning("%s %s: %s; retrying in %.0f s", self.address, self.name, message, delay)
        self._retry_due_ns = self.loop.now_ns() + int(delay * NS_PER_S)
        self._retry_timer = self.loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        self._retry_due_ns = None
        if self.state == FAULT:
            self._open()

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = None
        self._retry_due_ns = None

    def _close_driver(self) -> None:
        driver, self.driver = self.driver, None
        self._generation += 1  # the closed instance's context goes stale
        if driver is None:
            return
        try:
            driver.close()
        except Exception:
            log.exception("%s: driver close failed", self.address)
        self._last_driver_status = _safe_status(driver)

    # -- what drivers call (through _Context) -------------------------------------------------
    def _add_sample(self, sample: Sample, *, lock_only: bool = False) -> None:
        if not (isinstance(sample.local_ns, int) and isinstance(sample.reference_ns, int)):
            self._count("badsamples")  # absolute times must be integer ns
            return
        fudge = self.fudge(self.driver_cls.sample_fudge)
        fudge_ns = round(fudge * NS_PER_S)
        offset = (sample.reference_ns - sample.local_ns + fudge_ns) / NS_PER_S
        stored = _Stored(sample.local_ns, offset, sample.leap)
        self._lock = stored
        if lock_only:
            # Strict sources (gpsd mode 1): the time code only numbers pulses; with no
            # pulses the poll finds nothing, so serial time alone never reaches the clock.
            self._count("lock_timecodes")
            return
        self._samples.append(stored)
        self._got_sample()
        self._count("samples")

    def _add_pulse(self, local_ns: int) -> None:
        if not isinstance(local_ns, int):
            self._count("badsamples")
            return
        self._count("pulses")
        lock = self._lock
        leap = LEAP_NONE
        estimate: int | None
        if lock is not None and abs(local_ns - lock.local_ns) <= MAX_LOCK_AGE_NS:
            estimate = local_ns + round(lock.offset * NS_PER_S)
            leap = lock.leap
        elif self.pulse_reference is not None:
            estimate = self.pulse_reference(local_ns)
        else:
            estimate = None
        if estimate is None:
            self._count("unnumbered_pulses")  # no time code and no synchronised clock
            return
        second = nearest_second(estimate)
        if second is None:
            self._count("ambiguous_pulses")
            return
        time1_ns = round(self.fudge("time1") * NS_PER_S)
        self._pulses.append(_Stored(local_ns, (second - local_ns + time1_ns) / NS_PER_S, leap))
        self._got_sample()

    def _got_sample(self) -> None:
        self._last_sample_ns = self.clock.now_ns()
        if not self._got_sample_since_open:
            self._got_sample_since_open = True
            self.backoff.reset()  # the device works again: the next fault retries quickly

    def _log_timecode(self, timecode: str) -> None:
        self._timecode = timecode
        self._timecode_ns = self.clock.now_ns()
        self._timecode_logged = False

    def _count(self, counter: str, n: int = 1) -> None:
        self._counters[counter] = self._counters.get(counter, 0) + n
        event = _COUNTER_EVENT.get(counter)
        if event is not None:
            self._event = event

    # -- the poll -----------------------------------------------------------------------------
    def poll(self, now_ns: int) -> Measurement | None:
        """Reduce the samples gathered since the last poll to one Measurement (None: nothing
        usable this poll). Shifts reach; never raises."""
        self._count("polls")
        self.reach = (self.reach << 1) & 0xFF
        if self.state == OPEN and self.driver is not None:
            try:
                self.driver.on_poll()
            except Exception as exc:
                self._fault(f"poll failed: {_describe(exc)}")
        self._write_clockstats(now_ns)

        use_pulses = bool(self._pulses)
        stored = list(self._pulses if use_pulses else self._samples)
        self._pulses.clear()
        self._samples.clear()
        self.pps_active = use_pulses
        if not stored:
            self._count("noreply")
            if self.state == OPEN:
                self._event = EVENT_TIMEOUT
            return None
        leap = stored[-1].leap
        if leap == LEAP_NOTINSYNC:
            self._count("notinsync")  # ntpd: no reach bit while the source says so
            return None
        red = reduce_offsets([s.offset for s in stored])
        minjitter = self.config.minjitter or 0.0
        dispersion = max(red.jitter, 2.0**self.precision, minjitter)
        self.reach |= 1
        self.offset, self.jitter = red.offset, red.jitter
        if self._event in (EVENT_TIMEOUT, EVENT_FAULT) and self.state == OPEN:
            self._event = EVENT_NOMINAL
        return Measurement(
            offset=red.offset,
            delay=0.0,
            dispersion=dispersion,
            local_ns=stored[-1].local_ns,
            jitter=red.jitter,
            leap=leap,
            span_ns=stored[-1].local_ns - stored[0].local_ns,
        )

    def _write_clockstats(self, now_ns: int) -> None:
        if self._timecode_logged or not self._timecode:
            return
        self._timecode_logged = True
        if self.clockstats is None:
            return
        try:
            self.clockstats(clockstats_line(now_ns, self.address, self._timecode))
        except Exception:
            log.exception("%s: clockstats write failed", self.address)

    # -- diagnostics --------------------------------------------------------------------------
    def status(self, now_ns: int | None = None) -> dict[str, Any]:
        """Live state as plain data (drivers list, ``ntpq -c cv``, metrics)."""
        now = self.clock.now_ns() if now_ns is None else now_ns
        c = self._counters
        if self.driver is not None:
            driver_status = _safe_status(self.driver)
        else:
            driver_status = getattr(self, "_last_driver_status", {})
        retry_in = None
        if self._retry_due_ns is not None:
            retry_in = max(0.0, (self._retry_due_ns - self.loop.now_ns()) / NS_PER_S)
        flags = 0
        for n in range(1, 5):
            if getattr(self.config, f"flag{n}", None):
                flags |= 1 << (n - 1)
        return {
            "address": self.address,
            "name": self.name,
            "driver": self.driver_cls.name,
            "type": self.config.type,
            "unit": self.config.unit,
            "device": self.device(),
            "state": self.state,
            "opened": self.state == OPEN,
            "last_sample_age": None
            if self._last_sample_ns is None
            else (now - self._last_sample_ns) / NS_PER_S,
            "offset": self.offset,
            "jitter": self.jitter,
            "reach": self.reach,
            "pps": self.pps_active,
            "stratum": self.stratum,
            "refid": self.refid,
            "precision": self.precision,
            "timecode": self._timecode,
            "poll": c.get("polls", 0),
            "noreply": c.get("noreply", 0),
            "badformat": c.get("badformat", 0),
            "baddata": c.get("baddata", 0),
            "samples": c.get("samples", 0),
            "pulses": c.get("pulses", 0),
            "faults": c.get("faults", 0),
            "fudgetime1": self.fudge("time1"),
            "fudgetime2": self.fudge("time2"),
            "flags": flags,
            "event": self._event,
            "event_text": EVENT_TEXT[self._event],
            "last_fault": self._last_fault,
            "last_fault_age": None
            if self._last_fault_ns is None
            else (now - self._last_fault_ns) / NS_PER_S,
            "retry_in": retry_in,
            "counters": dict(c),
            "driver_status": driver_status,
        }

    def device(self) -> str:
        """The device path this unit opens (config ``path``, else the driver's default)."""
        if self.config.path:
            return str(self.config.path)
        paths = self.driver_cls.device_paths(self.config.unit)
        return paths[0] if paths else ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_status(driver: RefclockDriver) -> dict[str, Any]:
    try:
        return dict(driver.status())
    except Exception as exc:
        return {"error": _describe(exc)}
