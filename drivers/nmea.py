"""NMEA (type 20): GPS receivers on a serial port. Glue between the serial transport, the pure
decoder (nmea_decode) and the refclock framework; optionally hands PPS edges over for pairing.
"""

from __future__ import annotations

import errno
import logging
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from stratum1.refclock.driver import DriverContext, RefclockDriver
from stratum1.refclock.registry import register
from stratum1.sample import LEAP_NONE, Sample

from .nmea_decode import (
    DEFAULT_PIVOT_NS,
    MODE_EXT_STATS,
    MODE_MAX,
    Frame,
    LineResult,
    NmeaDecoder,
    NmeaFramer,
    baud_from_mode,
)

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
#: Edges older than this when a sentence arrives are not its second's edge.
PPS_MAX_AGE_NS = 1_000_000_000
#: How many latency measurements the suggested time2 is the median of.
LATENCY_WINDOW = 64
#: No bytes for this long: the receiver is silent (ntpd CEVNT_TIMEOUT).
SILENCE_NS = 2 * NS_PER_S


class PpsSource(Protocol):
    """What the driver needs of a PPS source (stratum1.hw.pps.PulseSource)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def fetch(self) -> Any:
        """Edges available now (objects with ``sequence`` and ``timestamp_ns``), oldest
        first; a kernel device returns its latest edge again until the next pulse."""
        ...


def _edges(fetched: Any) -> list[tuple[int | None, int]]:
    """(sequence, local ns) pairs from whatever a PPS source's fetch() returned."""
    if fetched is None:
        return []
    items = fetched if isinstance(fetched, list | tuple) else [fetched]
    out: list[tuple[int | None, int]] = []
    for e in items:
        if isinstance(e, int):
            out.append((None, e))
            continue
        ts = getattr(e, "timestamp_ns", None)
        if isinstance(ts, int):
            out.append((getattr(e, "sequence", None), ts))
    return out


def default_pps_source(path: str, clear_edge: bool, clock: Any) -> PpsSource:
    """The PPS device for ``ppspath``: a GPIO line ("gpio:...") or a kernel /dev/ppsN."""
    from stratum1.hw.pps import EDGE_ASSERT, EDGE_CLEAR, KernelPps

    edge = EDGE_CLEAR if clear_edge else EDGE_ASSERT
    try:
        from stratum1.hw.gpio import GpioPps, is_gpio_path
    except ImportError:  # pragma: no cover - gpio module is part of the package
        return KernelPps(path, edge)
    if is_gpio_path(path):
        return GpioPps(path, edge, clock)
    return KernelPps(path, edge)


def default_dcd_source(port: Any, clear_edge: bool) -> PpsSource:
    """PPS on the serial port's DCD pin through the kernel's PPS line discipline."""
    from stratum1.hw.pps import EDGE_ASSERT, EDGE_CLEAR, SerialDcdPps

    return SerialDcdPps(port, EDGE_CLEAR if clear_edge else EDGE_ASSERT)


@register
class NmeaDriver(RefclockDriver):
    type = 20
    name = "nmea"
    ntpq_name = "GPS_NMEA"
    description = "GPS receiver, NMEA 0183 on a serial port (RMC, GGA, GLL, ZDA, PUBX,04)"
    refid = "GPS"
    precision = -9
    poll = 4
    fudge_meanings = {
        "time1": "PPS offset, seconds",
        "time2": "serial end-of-line delay of the timing sentence, seconds",
        "flag1": "use PPS (ppspath, else /dev/gpspps{unit}, else the port's DCD line)",
        "flag2": "PPS on the clear (trailing) edge",
        "flag3": "kernel PPS discipline",
        "flag4": "obscure the position in clockstats and status",
        "minjitter": "lower bound of the jitter, seconds",
    }
    options = frozenset({"path", "ppspath", "baud", "mode"})
    sample_fudge = "time2"
    pps_precision = -20
    requires = ("pyserial", "serial-device")
    mode_range = (0, MODE_MAX)
    devices = ("/dev/gps{unit}", "/dev/gpspps{unit}")

    def __init__(
        self,
        config: Any,
        ctx: DriverContext,
        *,
        port_factory: Callable[..., Any] | None = None,
        pps_factory: Callable[[str, bool, Any], PpsSource] | None = None,
        dcd_factory: Callable[[Any, bool], PpsSource] | None = None,
        pivot_ns: int = DEFAULT_PIVOT_NS,
        char_ns: int | None = None,
    ) -> None:
        super().__init__(config, ctx)
        unit = int(getattr(config, "unit", 0) or 0)
        self.mode = int(getattr(config, "mode", 0) or 0)
        self.path = getattr(config, "path", None) or f"/dev/gps{unit}"
        self.baud = int(getattr(config, "baud", 0) or 0) or baud_from_mode(self.mode)
        self.use_pps = bool(getattr(config, "flag1", False))
        self.ppspath = getattr(config, "ppspath", None) or (
            f"/dev/gpspps{unit}" if self.use_pps else None
        )
        self.obscure = bool(getattr(config, "flag4", False))
        self._pivot_ns = pivot_ns
        self._char_ns = char_ns
        self._port_factory = port_factory
        self._pps_factory = pps_factory or default_pps_source
        self._dcd_factory = dcd_factory or default_dcd_source
        self.decoder = NmeaDecoder(self.mode, pivot_ns)
        self.framer = NmeaFramer()
        self.port: Any = None
        self.pps: PpsSource | None = None
        self.pps_error: str | None = None
        #: What the pulses come from once open: ppspath, or "<tty> DCD (/dev/ppsN)".
        self.pps_device: str | None = None
        self._last_edge: int | None = None
        self._last_edge_key: tuple[int | None, int] | None = None
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)  # eol - edge, ns
        self._burst_latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)  # burst start - edge
        self._eol_fraction: deque[int] = deque(maxlen=LATENCY_WINDOW)  # eol ns mod 1 s
        self._watchdog: Any = None
        self.last_timecode: str | None = None
        self.last_sample: Sample | None = None
        self.last_data_mono: int | None = None
        self.silent = False
        self.pps_used = 0
        self._recent: deque[tuple[int, bool]] = deque(maxlen=32)  # (mono ns, good frame)

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        from stratum1.hw.serial import SerialPort

        factory = self._port_factory or SerialPort
        self.port = factory(
            self.path,
            self.baud,
            self.ctx.loop,
            self.ctx.clock,
            self._on_data,
            self._on_error,
            char_ns=self._char_ns,
        )
        self.port.open()
        self.framer = NmeaFramer()
        self.decoder.reset_sequence()
        self.last_data_mono = self.ctx.loop.now_ns()
        self.silent = False
        if self.ppspath:
            self._open_pps()
        self._watchdog = self.ctx.loop.call_every(0.25, self._tick)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pps, self.pps = self.pps, None  # first: PPS on DCD lives on the port
        if pps is not None and hasattr(pps, "close"):
            try:
                pps.close()
            except OSError:
                pass
        if self.port is not None:
            self.port.close()
            self.port = None

    def _open_pps(self) -> None:
        """ppspath, else (flag1) /dev/gpsppsU, else PPS on the port's own DCD line, as ntpd
        does. Without PPS the unit keeps serving serial time and its status says why."""
        assert self.ppspath is not None
        self.pps, self.pps_device = None, None
        try:
            pps = self._pps_factory(self.ppspath, self.flag(2), self.ctx.clock)
            pps.open()
        except (OSError, ImportError, ValueError) as exc:
            missing = isinstance(exc, OSError) and exc.errno == errno.ENOENT
            if not (missing and self.use_pps and not getattr(self.config, "ppspath", None)):
                self.pps_error = _message(exc)
                log.warning("NMEA %s: PPS %s unavailable: %s", self.path, self.ppspath,
                            self.pps_error)
                return
        else:
            self.pps, self.pps_device, self.pps_error = pps, self.ppspath, None
            return
        # No /dev/gpsppsU: the pulse is on this port's DCD pin, or nowhere.
        try:
            dcd = self._dcd_factory(self.port, self.flag(2))
            dcd.open()
        except (OSError, ValueError) as exc:
            self.pps_error = f"{_message(exc)} (and there is no {self.ppspath})"
            log.warning("NMEA %s: %s", self.path, self.pps_error)
            return
        self.pps, self.pps_error = dcd, None
        self.pps_device = str(getattr(dcd, "description", f"{self.path} DCD"))
        log.info("NMEA %s: PPS on DCD through %s", self.path, self.pps_device)

    # -- data path ----------------------------------------------------------------------------
    def _on_error(self, message: str) -> None:
        self.ctx.report_fault(message)

    def _on_data(self, data: bytes, chunk: Any) -> None:
        self.last_data_mono = self.ctx.loop.now_ns()
        if self.silent:
            self.silent = False
        noise_before = self.framer.noise_bytes
        for frame in self.framer.feed(data):
            self._on_frame(frame, chunk)
        noise = self.framer.noise_bytes - noise_before
        if noise:
            self.ctx.count("noise_bytes", noise)
        self._poll_pps()

    def _on_frame(self, frame: Frame, chunk: Any) -> None:
        rx_ns = chunk.arrival_ns(frame.end)
        if frame.problem is not None:
            result = self.decoder.feed_bad_frame(frame)
            self._account(result)
            return
        else:
            result = self.decoder.feed_line(frame.data, rx_ns)
        self._account(result)
        if result.outcome != "accepted" or result.timecode is None:
            return
        tc = result.timecode
        self.last_timecode = self._timecode_text(result)
        self.ctx.log_timecode(self.last_timecode)
        sample = Sample(rx_ns, tc.reference_ns, LEAP_NONE)
        self.last_sample = sample
        self._eol_fraction.append(rx_ns % NS_PER_S)
        self._poll_pps()
        self._measure_latency(tc.reference_ns, rx_ns, chunk.burst_ns)
        self.ctx.add_sample(sample)

    def _account(self, result: LineResult) -> None:
        self.ctx.count(result.outcome)
        err = result.error
        if err is not None:
            self.ctx.count(err.counter)
            if err.outcome == "malformed":
                # ntpd's own counters, which also set the unit's clock event
                self.ctx.count("badformat" if err.event == "CEVNT_BADREPLY" else "baddata")
        self._recent.append((self.ctx.loop.now_ns(), result.outcome != "malformed"))

    def _timecode_text(self, result: LineResult) -> str:
        assert result.sentence is not None
        text = result.sentence.text
        if self.obscure and result.sentence.kind in ("RMC", "GGA", "GLL"):
            text = _obscure(result.sentence)
        if self.mode & MODE_EXT_STATS:
            c = self.decoder.counts
            text += (
                f" {c['received']} {c['accepted']} {c['rejected']} {c['malformed']}"
                f" {c['filtered']} {self.pps_used}"
            )
        return text

    # -- PPS ----------------------------------------------------------------------------------
    def _poll_pps(self) -> None:
        if self.pps is None:
            return
        try:
            edges = _edges(self.pps.fetch())
        except OSError as exc:
            self.pps_error = str(exc)
            return
        now = self.ctx.clock.now_ns()
        for key in edges:
            if key == self._last_edge_key:
                continue
            self._last_edge_key = key
            if not -PPS_MAX_AGE_NS < now - key[1] < 2 * PPS_MAX_AGE_NS:
                continue  # history (pulses stopped) or a clock stepped under us
            self._last_edge = key[1]
            self.ctx.add_pulse(key[1])

    def _measure_latency(self, reference_ns: int, rx_ns: int, burst_ns: int) -> None:
        """With a PPS edge of the same second, record how late the sentence came: that is the
        time2 this receiver needs, measured instead of calibrated by hand."""
        edge = self._last_edge
        if edge is None or reference_ns % NS_PER_S:
            return
        lag = rx_ns - edge
        if not 0 < lag < PPS_MAX_AGE_NS:
            return
        self.pps_used += 1
        self._latencies.append(lag)
        if 0 <= burst_ns - edge < PPS_MAX_AGE_NS:
            self._burst_latencies.append(burst_ns - edge)

    def suggested_time2(self) -> float | None:
        """Median end-of-line latency after the PPS edge, plus time1 (seconds), or None."""
        if len(self._latencies) < 3:
            return None
        time1 = float(getattr(self.config, "time1", 0.0) or 0.0)
        return statistics.median(self._latencies) / NS_PER_S + time1

    # -- diagnostics --------------------------------------------------------------------------
    def _tick(self) -> None:
        last = self.last_data_mono
        if last is not None and not self.silent and self.ctx.loop.now_ns() - last > SILENCE_NS:
            self.silent = True
            self.ctx.count("timeout")
            log.info("NMEA %s: no data for %.0f s", self.path, SILENCE_NS / NS_PER_S)
        self._poll_pps()

    def line_error(self) -> bool:
        """Mostly malformed input lately: wrong baud rate or a noisy line."""
        bad = sum(1 for _, good in self._recent if not good)
        return bad >= 5 and bad > len(self._recent) // 2

    def status(self) -> dict[str, Any]:
        sat = self.decoder.status.as_dict()
        out: dict[str, Any] = {
            "device": self.path,
            "baud": self.baud,
            "mode": self.mode,
            "open": self.port is not None,
            "silent": self.silent,
            "line_error": self.line_error(),
            "last_timecode": self.last_timecode,
            "counts": dict(self.decoder.counts),
            "noise_bytes": self.framer.noise_bytes,
            "gps": sat,
        }
        if self._eol_fraction:
            out["eol_fraction_ms"] = round(statistics.median(self._eol_fraction) / 1e6, 3)
        if self.ppspath:
            out["pps"] = {
                "path": self.pps_device or self.ppspath,
                "open": self.pps is not None,
                "error": self.pps_error,
                "used": self.pps_used,
            }
            t2 = self.suggested_time2()
            if t2 is not None:
                out["time2_suggested"] = round(t2, 4)
            if self._burst_latencies:
                med = statistics.median(self._burst_latencies)
                out["burst_latency_ms"] = round(med / 1e6, 3)
        return out


def _message(exc: BaseException) -> str:
    """An error's text without Python's "[Errno N]" prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _obscure(sentence: Any) -> str:
    """The sentence with latitude and longitude blanked (flag4), checksum left off."""
    f = list(sentence.fields)
    idx = {"RMC": (2, 4), "GGA": (1, 3), "GLL": (0, 2)}[sentence.kind]
    for i in idx:
        if i < len(f):
            f[i] = ""
    return f"${sentence.talker}{sentence.kind}," + ",".join(f)
