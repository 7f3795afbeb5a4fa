"""GPSD (type 46, ntpd's GPSD_JSON): time from a running gpsd over its JSON socket protocol.

The driver sends ``?WATCH={"enable":true,"json":true,"pps":true}`` and turns gpsd's TOFF reports
(serial time: the fix's second and the system time its sentence arrived) into samples and its
PPS reports into pulses. Mode 1 (strict) hands TOFF over only to number the pulses, so the
unit serves PPS or nothing; mode 2 (auto) uses pulses when they come and serial time otherwise.
When gpsd goes away the unit reopens the connection with back-off.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from stratum1.ntptime import NS_PER_S
from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register
from stratum1.sample import Sample

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2947
URL_PREFIX = "gpsd://"
#: Units u+128 are ntpd's secondary, PPS-only view of the device /dev/gpsU.
SECONDARY_UNIT = 128
#: A longer line is not gpsd's (its largest reports, SKY, are a few kB): dropped.
MAX_LINE = 32 * 1024
CONNECT_TIMEOUT_S = 2.0
#: gpsd sends something every second while it has a device; silence this long is a hang.
SILENCE_FAULT_S = 60.0
MODE_SERIAL = 0  # TOFF samples only (PPS is for the u+128 unit)
MODE_STRICT = 1
MODE_AUTO = 2


@dataclass(frozen=True, slots=True)
class GpsdTarget:
    host: str
    port: int
    device: str | None  # None: every device gpsd reports

    def __str__(self) -> str:
        return f"gpsd {self.host}:{self.port}" + (f" {self.device}" if self.device else "")


def parse_target(path: str | None, unit: int) -> GpsdTarget:
    """``path`` is the watched device (``/dev/ttyACM0``), or ``gpsd://HOST[:PORT][/dev/...]``;
    without it the unit watches /dev/gpsU on the local gpsd, as ntpd does."""
    default_dev = f"/dev/gps{unit % SECONDARY_UNIT}"
    if not path:
        return GpsdTarget(DEFAULT_HOST, DEFAULT_PORT, default_dev)
    if not path.startswith(URL_PREFIX):
        return GpsdTarget(DEFAULT_HOST, DEFAULT_PORT, path)
    rest = path[len(URL_PREFIX):]
    hostport, slash, dev = rest.partition("/")
    device = "/" + dev if slash and dev else None
    host, port = hostport, DEFAULT_PORT
    if hostport.startswith("["):  # [::1]:2947
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"{path!r}: unclosed '[' in the gpsd address")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail.startswith(":"):
            port = _port(path, tail[1:])
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = _port(path, p)
    if not host:
        host = DEFAULT_HOST
    return GpsdTarget(host, port, device)


def _port(path: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{path!r}: bad gpsd port {text!r}")
    return int(text)


def watch_command(device: str | None) -> bytes:
    watch: dict[str, Any] = {"enable": True, "json": True, "pps": True}
    if device:
        watch["device"] = device
    return b"?WATCH=" + json.dumps(watch, separators=(",", ":")).encode() + b";\n"


class JsonLines:
    """Splits gpsd's stream into JSON objects; bad lines are counted, never raised."""

    def __init__(self) -> None:
        self._buf = b""
        self.bad = 0
        self.overlong = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._buf = b""
            self.overlong += 1
        out = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if len(line) > MAX_LINE:
                self.overlong += 1
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                self.bad += 1
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
                self.bad += 1
                continue
            out.append(obj)
        return out


def _stamp(report: dict[str, Any], prefix: str) -> int | None:
    """``<prefix>_sec`` + ``<prefix>_nsec`` as integer ns, or None if they are not sane."""
    sec, nsec = report.get(f"{prefix}_sec"), report.get(f"{prefix}_nsec")
    if type(sec) is not int or type(nsec) is not int or sec < 0 or not 0 <= nsec < NS_PER_S:
        return None
    return sec * NS_PER_S + nsec


@register
class GpsdDriver(RefclockDriver):
    type = 46
    name = "gpsd"
    ntpq_name = "GPSD_JSON"
    description = "gpsd JSON client (TOFF serial time and PPS reports)"
    refid = "GPSD"
    precision = -9
    pps_precision = -20
    max_unit = 255
    mode_range = (0, 2)
    options = frozenset({"path", "mode"})
    sample_fudge = "time2"
    requires = ("gpsd",)
    fudge_meanings = {
        "time1": "PPS offset, seconds",
        "time2": "serial time (TOFF) offset, seconds",
        "flag2": "ignore gpsd's PPS reports",
        "flag4": "log each TOFF/PPS report to clockstats",
    }

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.target = parse_target(config.path, config.unit)
        self.sock: socket.socket | None = None
        self.decoder = JsonLines()
        self._watchdog: Any = None
        self._last_rx_ns = 0
        self.version = ""
        self.fix_mode: int | None = None
        self.devices: list[str] = []
        self.last_error = ""
        self.tally = dict.fromkeys(("toff", "pps", "tpv", "ignored"), 0)

    @property
    def secondary(self) -> bool:
        return self.config.unit >= SECONDARY_UNIT

    @property
    def use_serial(self) -> bool:
        return not self.secondary

    @property
    def strict(self) -> bool:
        """Mode 1: only PPS pulses numbered by TOFF reports reach the clock (no serial time)."""
        return not self.secondary and (self.config.mode or MODE_SERIAL) == MODE_STRICT

    @property
    def use_pps(self) -> bool:
        if self.flag(2):
            return False
        return self.secondary or (self.config.mode or MODE_SERIAL) in (MODE_STRICT, MODE_AUTO)

    # -- connection -------------------------------------------------------------------------
    def open(self) -> None:
        if self.sock is not None:
            return
        try:
            sock = socket.create_connection((self.target.host, self.target.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot reach {self.target}: {exc.strerror or exc}") from exc
        try:
            sock.sendall(watch_command(self.target.device))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{self.target}: sending ?WATCH failed: {exc}") from exc
        sock.setblocking(False)
        self.sock = sock
        self.decoder = JsonLines()
        self._last_rx_ns = self.ctx.loop.now_ns()
        self.ctx.loop.add_reader(sock.fileno(), self._on_readable)
        self._watchdog = self.ctx.loop.call_every(SILENCE_FAULT_S / 4, self._check_silence)

    def close(self) -> None:
        timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.cancel()
        sock, self.sock = self.sock, None
        if sock is not None:
            self.ctx.loop.remove_reader(sock.fileno())
            sock.close()

    def _check_silence(self) -> None:
        if self.sock is not None and self.ctx.loop.now_ns() - self._last_rx_ns > SILENCE_FAULT_S * NS_PER_S:
            self.ctx.report_fault(f"{self.target}: nothing from gpsd for {SILENCE_FAULT_S:.0f} s")

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.ctx.report_fault(f"{self.target}: {exc.strerror or exc}")
            return
        if not data:
            self.ctx.report_fault(f"{self.target}: gpsd closed the connection")
            return
        self._last_rx_ns = self.ctx.loop.now_ns()
        bad, overlong = self.decoder.bad, self.decoder.overlong
        for report in self.decoder.feed(data):
            self.handle(report)
        if self.decoder.bad > bad or self.decoder.overlong > overlong:
            self.ctx.count("badformat", self.decoder.bad - bad + self.decoder.overlong - overlong)

    # -- reports ----------------------------------------------------------------------------
    def handle(self, report: dict[str, Any]) -> None:
        """One decoded gpsd report (public so tests can drive the decoder side directly)."""
        cls = report["class"]
        dev = report.get("device")
        if self.target.device and isinstance(dev, str) and dev != self.target.device:
            self.tally["ignored"] += 1
            return
        if cls == "TOFF":
            self._toff(report)
        elif cls == "PPS":
            self._pps(report)
        elif cls == "TPV":
            self.tally["tpv"] += 1
            mode = report.get("mode")
            self.fix_mode = mode if type(mode) is int else None
        elif cls == "VERSION":
            self.version = str(report.get("release", ""))
        elif cls == "DEVICES":
            devs = report.get("devices")
            if isinstance(devs, list):
                self.devices = [d.get("path", "?") for d in devs if isinstance(d, dict)]
        elif cls == "ERROR":
            self.last_error = str(report.get("message", ""))
            self.ctx.count("gpsd_error")

    def _toff(self, report: dict[str, Any]) -> None:
        self.tally["toff"] += 1
        if not self.use_serial:
            return
        real, local = _stamp(report, "real"), _stamp(report, "clock")
        if real is None or local is None:
            self.ctx.count("baddata")
            return
        if self.fix_mode is not None and self.fix_mode < 2:
            self.ctx.count("no_fix")  # gpsd has time but no fix: not to be trusted
            return
        if self.strict:
            # Mode 1 serves PPS or nothing: the TOFF only numbers the pulses that follow.
            self.ctx.add_sample(Sample(local, real), lock_only=True)
        else:
            self.ctx.add_sample(Sample(local, real))
        if self.flag(4):
            self.ctx.log_timecode(f"TOFF {real // NS_PER_S}.{real % NS_PER_S:09d} {local // NS_PER_S}.{local % NS_PER_S:09d}")

    def _pps(self, report: dict[str, Any]) -> None:
        self.tally["pps"] += 1
        if not self.use_pps:
            return
        real, local = _stamp(report, "real"), _stamp(report, "clock")
        if real is None or local is None:
            self.ctx.count("baddata")
            return
        self.ctx.add_pulse(local)
        if self.flag(4):
            self.ctx.log_timecode(f"PPS {real // NS_PER_S}.{real % NS_PER_S:09d} {local // NS_PER_S}.{local % NS_PER_S:09d}")

    def _role(self) -> str:
        if self.secondary:
            return "pps"
        if self.strict:
            return "pps+toff" if self.use_pps else "none (mode 1 needs PPS, flag2 ignores it)"
        return "serial+pps" if self.use_pps else "serial"

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "device": str(self.target),
            "connected": self.sock is not None,
            "gpsd_version": self.version,
            "fix_mode": self.fix_mode,
            "gpsd_devices": list(self.devices),
            "role": self._role(),
            **self.tally,
        }
        if self.last_error:
            st["gpsd_error"] = self.last_error
        return st
