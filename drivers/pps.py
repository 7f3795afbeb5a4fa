"""PPS (type 22, ntpd's ATOM): the pulse-per-second edge from /dev/ppsN or a GPIO line.

The driver only stamps: once a second it fetches the latest kernel-stamped edge and hands each
new one to the framework with ``add_pulse``; which second the pulse marks comes from the paired
NMEA unit, the prefer peer or the synchronised system clock (the framework's job).
"""

from __future__ import annotations

from typing import Any

from stratum1.hw.gpio import GpioPps, is_gpio_path
from stratum1.hw.pps import EDGE_ASSERT, EDGE_CLEAR, Edge, KernelPps, PulseSource

from stratum1.ntptime import NS_PER_S
from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register

#: How often the latest edge is fetched (ntpd's ATOM and chrony's dpoll 0: once a second).
FETCH_INTERVAL_S = 1.0
#: An edge older than this when first seen is history (pulses stopped), not a fresh pulse.
MAX_EDGE_AGE_NS = 2 * NS_PER_S
#: An edge this far in the future means the clock was stepped back under us.
MAX_EDGE_LEAD_NS = NS_PER_S // 2
_SEQ_MOD = 1 << 32


def pps_path(config: Any, unit: int) -> str:
    """The device a PPS unit opens: ``path`` (ntpsec), else ``ppspath``, else /dev/ppsU."""
    return getattr(config, "path", None) or getattr(config, "ppspath", None) or f"/dev/pps{unit}"


@register
class PpsDriver(RefclockDriver):
    type = 22
    name = "pps"
    ntpq_name = "PPS"
    description = "Pulse per second: kernel PPS (/dev/ppsN, RFC 2783) or a GPIO line (libgpiod v2)"
    refid = "PPS"
    precision = -20
    fudge_meanings = {
        "time1": "PPS offset, seconds (cable and receiver delay)",
        "flag2": "use the clear (falling) edge instead of assert (rising)",
        "flag3": "bind the kernel hardpps discipline to this device (kernel PPS only)",
        "flag4": "log each second's offset to clockstats",
    }
    options = frozenset({"path", "ppspath"})
    is_pps = True
    devices = ("/dev/pps{unit}",)

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.source: PulseSource | None = None
        self._timer: Any = None
        self.last: Edge | None = None
        self.last_pulse_ns: int | None = None
        self.pulses = 0
        self.missed = 0
        self.repeats = 0
        self.bind_error = ""

    @property
    def edge(self) -> str:
        return EDGE_CLEAR if getattr(self.config, "flag2", None) else EDGE_ASSERT

    def make_source(self) -> PulseSource:
        path = pps_path(self.config, self.config.unit)
        if is_gpio_path(path):
            return GpioPps(path, self.edge, self.ctx.clock)
        return KernelPps(path, self.edge)

    def open(self) -> None:
        if self.source is not None:
            return
        source = self.make_source()
        source.open()
        self.source = source
        self.last = None
        self.last_pulse_ns = None
        self.bind_error = ""
        if getattr(self.config, "flag3", None):
            self._bind_hardpps(source)
        self._timer = self.ctx.loop.call_every(FETCH_INTERVAL_S, self.fetch)

    def _bind_hardpps(self, source: PulseSource) -> None:
        # A failed binding is not fatal: the PPS still feeds the software discipline.
        if not isinstance(source, KernelPps):
            self.bind_error = "flag3 (kernel hardpps) needs a kernel PPS device, not a GPIO line"
        else:
            try:
                source.kc_bind(True)
            except OSError as exc:
                self.bind_error = f"PPS_KC_BIND failed: {exc.strerror or exc} (needs CAP_SYS_TIME)"
        if self.bind_error:
            self.ctx.count("hardpps_bind_failed")

    def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        source, self.source = self.source, None
        if source is not None:
            source.close()

    def fetch(self) -> None:
        """Timer tick: hand every new edge to the framework."""
        if self.source is None:
            return
        try:
            edges = self.source.fetch()
        except OSError as exc:
            self.ctx.report_fault(f"{self.source.description}: fetch failed: {exc}")
            return
        now = self.ctx.clock.now_ns()
        fresh = 0
        for edge in edges:
            if self._accept(edge, now):
                fresh += 1
        if not fresh:
            self.repeats += 1
            self.ctx.count("no_new_pulse")

    def _accept(self, edge: Edge, now_ns: int) -> bool:
        last = self.last
        if last is not None and edge.sequence == last.sequence:
            return False
        self.last = edge
        if last is not None:
            gap = (edge.sequence - last.sequence) % _SEQ_MOD
            if gap > 1:
                self.missed += gap - 1
                self.ctx.count("missed_pulse", gap - 1)
        if now_ns - edge.timestamp_ns > MAX_EDGE_AGE_NS:
            self.ctx.count("stale_pulse")
            return False
        if edge.timestamp_ns - now_ns > MAX_EDGE_LEAD_NS or (
            self.last_pulse_ns is not None and edge.timestamp_ns <= self.last_pulse_ns
        ):
            self.ctx.count("bad_timestamp")
            return False
        self.last_pulse_ns = edge.timestamp_ns
        self.pulses += 1
        self.ctx.add_pulse(edge.timestamp_ns)
        sec, nsec = divmod(edge.timestamp_ns, NS_PER_S)
        self.ctx.log_timecode(f"{self.edge} {sec}.{nsec:09d} #{edge.sequence}")
        return True

    def status(self) -> dict[str, Any]:
        src = self.source
        st: dict[str, Any] = {
            "device": src.description if src else pps_path(self.config, self.config.unit),
            "edge": self.edge,
            "pulses": self.pulses,
            "missed": self.missed,
            "no_new_pulse": self.repeats,
        }
        if self.last is not None:
            st["last_sequence"] = self.last.sequence
            st["last_edge_ns"] = self.last.timestamp_ns
        if isinstance(src, KernelPps):
            st["capabilities"] = f"0x{src.capabilities:x}"
            st["mode"] = f"0x{src.mode:x}"
            st["hardpps"] = src.bound
            if src.note:
                st["note"] = src.note
        elif isinstance(src, GpioPps):
            st["event_clock"] = src.event_clock
            st["converted_from_monotonic"] = src.converted
        if self.bind_error:
            st["hardpps_error"] = self.bind_error
        return st
