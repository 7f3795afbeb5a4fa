"""The opt-in Prometheus endpoint: a collector that reads the daemon's live state at each scrape,
served by a small non-blocking HTTP responder on the daemon's EventLoop (no thread)."""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .sysstats import server_counters

log = logging.getLogger(__name__)

PREFIX = "stratum1"
#: ntpq's names for the selection codes (the tally characters `` x.-+#*o``).
SELECTION_STATES = ("reject", "falsetick", "excess", "outlier", "candidate", "backup",
                    "sys.peer", "pps.peer")
#: ServerStats fields that count dropped packets, by reason.
DROP_REASONS = ("malformed", "bad_version", "mode7", "not_a_request", "bad_auth", "oversize",
                "restricted", "rate_limited")
MAX_REQUEST = 8192
MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT_S = 5.0


# -- the state a scrape reads ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemState:
    synchronized: bool = False
    stratum: int = 16
    leap: int = 3
    offset: float = 0.0  # s
    frequency_ppm: float = 0.0
    sys_jitter: float = 0.0  # s
    clock_jitter: float = 0.0  # s
    clock_wander_ppm: float = 0.0
    root_delay: float = 0.0  # s
    root_dispersion: float = 0.0  # s
    poll: int = 6  # log2 s
    refid: str = ""
    system_peer: str = ""
    uptime: float = 0.0  # s


@dataclass(frozen=True, slots=True)
class SourceState:
    name: str
    address: str
    reach: int = 0
    selection: int = 0  # 0..7, SELECTION_STATES
    offset: float = 0.0
    jitter: float = 0.0
    delay: float = 0.0
    dispersion: float = 0.0
    stratum: int = 16
    poll: int = 6
    last_sample_age: float | None = None


@dataclass(frozen=True, slots=True)
class DriverState:
    name: str  # e.g. GPS_NMEA(0)
    driver: str  # e.g. nmea
    address: str  # 127.127.t.u
    opened: bool = False
    pps: bool = False
    samples: int = 0
    pulses: int = 0
    faults: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)  # noreply/badformat/baddata


@dataclass(frozen=True, slots=True)
class MetricsState:
    system: SystemState = field(default_factory=SystemState)
    sources: tuple[SourceState, ...] = ()
    drivers: tuple[DriverState, ...] = ()
    server: Mapping[str, int] = field(default_factory=dict)  # summed ServerStats fields


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if math.isfinite(value) else default


def _call(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    return value() if callable(value) else value


def _refid(raw: Any) -> str:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).rstrip(b"\0").decode("ascii", "replace")
    return str(raw or "")


def daemon_state(daemon: Any, started_ns: int | None = None) -> MetricsState:
    """The live state of a ``stratum1.daemon.Daemon`` (read-only; safe to call at any time)."""
    now = int(daemon.clock.now_ns())
    snap = daemon.snapshot
    system = getattr(daemon, "system", None)
    discipline = getattr(daemon, "discipline", None) or getattr(system, "discipline", None)
    sources = list(getattr(daemon, "sources", ()))
    units = {s.association.assoc_id: s.unit for s in sources}
    assocs = list(getattr(system, "associations", ())) or [s.association for s in sources]
    names: dict[int, str] = {}
    source_states = []
    for a in assocs:
        unit = units.get(a.assoc_id)
        name = str(getattr(unit, "name", None) or a.name)
        address = str(getattr(unit, "address", None) or getattr(a, "address", None) or a.name)
        names[a.assoc_id] = name
        rec_ns = int(getattr(a, "rec_ns", 0) or 0)
        source_states.append(SourceState(
            name=name, address=address, reach=int(getattr(a, "reach", 0)),
            selection=int(getattr(a, "select_code", 0)) & 7,
            offset=_num(getattr(a, "offset", 0.0)), jitter=_num(getattr(a, "jitter", 0.0)),
            delay=_num(getattr(a, "delay", 0.0)), dispersion=_num(getattr(a, "dispersion", 0.0)),
            stratum=int(getattr(a, "stratum", 16)), poll=int(getattr(a, "poll", 6)),
            last_sample_age=(now - rec_ns) / 1e9 if rec_ns else None,
        ))
    driver_states = []
    for s in sources:
        try:
            st = s.unit.status(now)
        except Exception:  # a driver's status must not break the scrape
            log.exception("status of %s failed", getattr(s.unit, "address", "?"))
            continue
        driver_states.append(DriverState(
            name=str(st.get("name", "")), driver=str(st.get("driver", "")),
            address=str(st.get("address", "")), opened=bool(st.get("opened")),
            pps=bool(st.get("pps")), samples=int(st.get("samples", 0)),
            pulses=int(st.get("pulses", 0)), faults=int(st.get("faults", 0)),
            errors={k: int(st.get(k, 0)) for k in ("noreply", "badformat", "baddata")},
        ))
    server = server_counters(getattr(daemon, "servers", ()))
    start = started_ns if started_ns is not None else getattr(daemon, "started_ns", None)
    sys_state = SystemState(
        synchronized=bool(snap.synchronized), stratum=int(snap.stratum), leap=int(snap.leap),
        offset=_num(snap.offset), frequency_ppm=_num(_call(discipline, "frequency_ppm", 0.0)),
        sys_jitter=_num(snap.jitter), clock_jitter=_num(_call(discipline, "jitter", 0.0)),
        clock_wander_ppm=_num(_call(discipline, "wander", 0.0)),
        root_delay=_num(snap.root_delay), root_dispersion=_num(snap.root_dispersion_at(now)),
        poll=int(snap.poll), refid=_refid(snap.refid),
        system_peer=names.get(snap.system_peer_id, ""),
        uptime=max(0.0, (now - start) / 1e9) if start else 0.0,
    )
    return MetricsState(sys_state, tuple(source_states), tuple(driver_states), server)


# -- the collector -----------------------------------------------------------------------------


class StratumCollector:
    """A prometheus_client collector: ``collect()`` reads ``state()`` and yields the families.

    Base units (seconds), counters end in ``_total``, one ``stratum1_`` prefix; labels
    ``source``/``address`` for associations and ``source``/``driver`` for refclock units.
    """

    def __init__(self, state: Callable[[], MetricsState]) -> None:
        self._state = state

    def describe(self) -> list[Any]:
        return []  # families are only known at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        try:
            state = self._state()
        except Exception:
            log.exception("metrics state failed")
            yield GaugeMetricFamily(f"{PREFIX}_up", "1 if the daemon's state could be read",
                                    value=0)
            return
        p = PREFIX
        yield GaugeMetricFamily(f"{p}_up", "1 if the daemon's state could be read", value=1)
        yield InfoMetricFamily(f"{p}_build", "stratum1 version", value={"version": __version__})
        s = state.system

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(f"{p}_{name}", doc, value=value)

        yield gauge("uptime_seconds", "Seconds since the daemon started", s.uptime)
        yield gauge("system_synchronized", "1 when the server serves synchronised time",
                    1 if s.synchronized else 0)
        yield gauge("system_stratum", "System stratum (16: unsynchronised)", s.stratum)
        yield gauge("system_leap", "Leap indicator: 0 none, 1 insert, 2 delete, 3 unsync", s.leap)
        yield gauge("system_offset_seconds", "Last combined offset of the selected sources",
                    s.offset)
        yield gauge("system_frequency_ppm", "Frequency correction of the local clock (PPM)",
                    s.frequency_ppm)
        yield gauge("system_jitter_seconds", "System jitter of the selected sources",
                    s.sys_jitter)
        yield gauge("clock_jitter_seconds", "Jitter of the clock discipline", s.clock_jitter)
        yield gauge("clock_wander_ppm", "Frequency wander of the local clock (PPM)",
                    s.clock_wander_ppm)
        yield gauge("system_root_delay_seconds", "Root delay", s.root_delay)
        yield gauge("system_root_dispersion_seconds", "Root dispersion", s.root_dispersion)
        yield gauge("system_poll_seconds", "System poll interval", 2.0 ** s.poll)
        info = InfoMetricFamily(f"{p}_system_peer", "The selected source and the refid served",
                                labels=["source", "refid"])
        info.add_metric([s.system_peer, s.refid], {})
        yield info

        labels = ["source", "address"]
        reach = GaugeMetricFamily(f"{p}_source_reach", "Reach register (8 polls, 0-255)",
                                  labels=labels)
        ratio = GaugeMetricFamily(f"{p}_source_reachability_ratio",
                                  "Share of the last 8 polls that produced a sample",
                                  labels=labels)
        offset = GaugeMetricFamily(f"{p}_source_offset_seconds", "Filtered offset",
                                   labels=labels)
        jitter = GaugeMetricFamily(f"{p}_source_jitter_seconds", "Jitter", labels=labels)
        delay = GaugeMetricFamily(f"{p}_source_delay_seconds", "Round-trip delay",
                                  labels=labels)
        disp = GaugeMetricFamily(f"{p}_source_dispersion_seconds", "Dispersion", labels=labels)
        stratum = GaugeMetricFamily(f"{p}_source_stratum", "Stratum", labels=labels)
        poll = GaugeMetricFamily(f"{p}_source_poll_seconds", "Poll interval", labels=labels)
        age = GaugeMetricFamily(f"{p}_source_last_sample_age_seconds",
                                "Seconds since the last valid sample", labels=labels)
        selected = GaugeMetricFamily(f"{p}_source_selection",
                                     "Selection state (1 for the state the source is in)",
                                     labels=[*labels, "state"])
        for src in state.sources:
            lv = [src.name, src.address]
            reach.add_metric(lv, src.reach)
            ratio.add_metric(lv, bin(src.reach & 0xFF).count("1") / 8)
            offset.add_metric(lv, src.offset)
            jitter.add_metric(lv, src.jitter)
            delay.add_metric(lv, src.delay)
            disp.add_metric(lv, src.dispersion)
            stratum.add_metric(lv, src.stratum)
            poll.add_metric(lv, 2.0 ** src.poll)
            if src.last_sample_age is not None:
                age.add_metric(lv, src.last_sample_age)
            for code, name in enumerate(SELECTION_STATES):
                selected.add_metric([*lv, name], 1 if code == src.selection else 0)
        yield from (reach, ratio, offset, jitter, delay, disp, stratum, poll, age, selected)

        dl = ["source", "driver"]
        samples = CounterMetricFamily(f"{p}_driver_samples", "Samples decoded", labels=dl)
        pulses = CounterMetricFamily(f"{p}_driver_pulses", "PPS pulses received", labels=dl)
        faults = CounterMetricFamily(f"{p}_driver_faults", "Device faults (open/read errors)",
                                     labels=dl)
        errors = CounterMetricFamily(f"{p}_driver_errors", "Time codes that gave no sample",
                                     labels=[*dl, "kind"])
        opened = GaugeMetricFamily(f"{p}_driver_device_open", "1 while the device is open",
                                   labels=dl)
        pps = GaugeMetricFamily(f"{p}_driver_pps_active", "1 while PPS pulses are used",
                                labels=dl)
        for d in state.drivers:
            lv = [d.name, d.driver]
            samples.add_metric(lv, d.samples)
            pulses.add_metric(lv, d.pulses)
            faults.add_metric(lv, d.faults)
            for kind, count in sorted(d.errors.items()):
                errors.add_metric([*lv, kind], count)
            opened.add_metric(lv, 1 if d.opened else 0)
            pps.add_metric(lv, 1 if d.pps else 0)
        yield from (samples, pulses, faults, errors, opened, pps)

        srv = state.server

        def counter(name: str, doc: str, value: int) -> Any:
            return CounterMetricFamily(f"{p}_{name}", doc, value=value)

        yield counter("server_requests", "NTP packets received", srv.get("received", 0))
        yield counter("server_replies", "NTP replies sent", srv.get("replied", 0))
        yield counter("server_kod", "Rate kiss-o'-death replies sent", srv.get("kod_sent", 0))
        yield counter("server_control_requests", "Mode-6 (ntpq) packets received",
                      srv.get("control", 0))
        yield counter("server_send_errors", "Replies the socket refused",
                      srv.get("send_errors", 0))
        dropped = CounterMetricFamily(f"{p}_server_dropped", "Packets dropped, by reason",
                                      labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], srv.get(reason, 0))
        yield dropped


def registry_for(state: Callable[[], MetricsState]) -> Any:
    """A registry holding only our collector (no process/platform collectors, no _created)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StratumCollector(state))  # type: ignore[arg-type]
    return registry


# -- the HTTP responder ------------------------------------------------------------------------


def parse_address(spec: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[v6]:PORT`` or a bare ``PORT`` (loopback) to (host, port)."""
    spec = spec.strip()
    if spec.isdigit():
        host, port = "127.0.0.1", spec
    elif spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise ValueError(f"metrics address {spec!r}: expected ADDR:PORT")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics address {spec!r}: bad port {port!r}")
    return host or "0.0.0.0", int(port)


class _Connection:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline_ns", "timer")

    def __init__(self, sock: socket.socket, deadline_ns: int) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.deadline_ns = deadline_ns
        self.timer: Any = None


class MetricsServer:
    """GET /metrics over HTTP/1.0-style one-shot connections, driven by an EventLoop.

    Every step is non-blocking: a slow or silent client is cut off after 5 s, at most 16
    connections are served at once, and requests larger than 8 KiB are refused.
    """

    def __init__(self, address: tuple[str, int], registry: Any, *,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.address = address
        self.registry = registry
        self._monotonic_ns = monotonic_ns
        self._sock: socket.socket | None = None
        self._loop: Any = None
        self._conns: dict[int, _Connection] = {}
        self.scrapes = 0
        self.refused = 0

    @property
    def bound_address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    def open(self) -> None:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def attach(self, loop: Any) -> None:
        """Open the listening socket (if needed) and register it with ``loop``."""
        if self._sock is None:
            self.open()
        assert self._sock is not None
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._accept)
        host, port = self.bound_address
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- connections --------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(MAX_CONNECTIONS):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("metrics accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            c = _Connection(conn, self._monotonic_ns() + int(CONNECTION_TIMEOUT_S * 1e9))
            fd = conn.fileno()
            self._conns[fd] = c
            self._loop.add_reader(fd, lambda fd=fd: self._readable(fd))
            c.timer = self._loop.call_later(CONNECTION_TIMEOUT_S, lambda fd=fd: self._expire(fd))

    def _readable(self, fd: int) -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        c.inbuf += data
        if b"\r\n\r\n" not in c.inbuf and b"\n\n" not in c.inbuf:
            if len(c.inbuf) > MAX_REQUEST:
                self._respond(fd, 431, b"request too large\n", "text/plain")
            return
        self._loop.remove_reader(fd)
        self._handle(fd, c.inbuf)

    def _handle(self, fd: int, request: bytes) -> None:
        head = request.split(b"\n\n")[0].split(b"\r\n\r\n")[0]
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(fd, 400, b"bad request\n", "text/plain")
            return
        method, target, _version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._respond(fd, 405, b"only GET\n", "text/plain", extra="Allow: GET, HEAD\r\n")
            return
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(headers.get("accept", ""))
            try:
                body = encoder(self.registry)
            except Exception:
                log.exception("metrics exposition failed")
                self._respond(fd, 500, b"metrics failed\n", "text/plain")
                return
            self.scrapes += 1
            self._respond(fd, 200, body, content_type, head_only=method == "HEAD")
        elif path == "/":
            self._respond(fd, 200, b'<html><body><a href="/metrics">metrics</a></body></html>\n',
                          "text/html", head_only=method == "HEAD")
        else:
            self._respond(fd, 404, b"not found: try /metrics\n", "text/plain")

    def _respond(self, fd: int, code: int, body: bytes, content_type: str, *,
                 head_only: bool = False, extra: str = "") -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[code]
        header = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        c.outbuf = header.encode("latin-1") + (b"" if head_only else body)
        self._send(fd)

    def _send(self, fd: int) -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        try:
            while c.outbuf:
                sent = c.sock.send(c.outbuf)
                c.outbuf = c.outbuf[sent:]
        except (BlockingIOError, InterruptedError):
            # The loop has no writer callbacks: try again shortly, within the deadline.
            self._loop.call_later(0.01, lambda: self._send(fd))
            return
        except OSError:
            pass
        self._drop(fd)

    def _expire(self, fd: int) -> None:
        if fd in self._conns:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        c = self._conns.pop(fd, None)
        if c is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        if c.timer is not None:
            c.timer.cancel()
        try:
            c.sock.close()
        except OSError:
            pass


def start_metrics(loop: Any, address: tuple[str, int] | str,
                  state: Callable[[], MetricsState]) -> MetricsServer:
    """Serve ``state()`` as Prometheus metrics at ``address`` on ``loop``."""
    if isinstance(address, str):
        address = parse_address(address)
    server = MetricsServer(address, registry_for(state), monotonic_ns=loop.now_ns)
    server.attach(loop)
    return server


__all__ = [
    "DriverState",
    "MetricsServer",
    "MetricsState",
    "SourceState",
    "StratumCollector",
    "SystemState",
    "daemon_state",
    "parse_address",
    "registry_for",
    "start_metrics",
]
