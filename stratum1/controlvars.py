"""The variable lists ntpq reads (system ``rv``, association ``rv &N``, clock ``cv``) in ntpd's
names and formats, and ``DaemonView``, the read-only adapter from the running daemon to
``stratum1.control``.
"""

from __future__ import annotations

import ipaddress
import math
import platform
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import __version__
from .control import (
    PEER_CONFIG,
    PEER_REACH,
    SRC_HF_RADIO,
    SRC_LF_RADIO,
    SRC_LOCAL,
    SRC_NTP,
    SRC_OTHER,
    SRC_PPS,
    SRC_TELEPHONE,
    SRC_UHF_RADIO,
    SRC_UNSPEC,
    SYS_EVNT_CLOCK_STEP,
    SYS_EVNT_CLOCK_SYNC,
    SYS_EVNT_NO_SYS_PEER,
    SYS_EVNT_RESTART,
    Variables,
    clock_status,
    peer_status,
    system_status,
)
from .ntptime import ns_to_ntp64
from .snapshot import STRATUM_UNSYNC, SystemSnapshot

NTP_PORT = 123
MODE_CLIENT = 3
MODE_SERVER = 4
#: ntpd's lowest system poll (``mintc``).
MIN_SYS_POLL = 3

#: Refclock type -> the source field of the system status word (ntpd's per-driver class).
_SOURCE_BY_TYPE = {
    1: SRC_LOCAL,
    4: SRC_LF_RADIO, 8: SRC_LF_RADIO, 27: SRC_LF_RADIO, 32: SRC_LF_RADIO, 33: SRC_LF_RADIO,
    34: SRC_LF_RADIO, 35: SRC_LF_RADIO, 37: SRC_LF_RADIO, 40: SRC_LF_RADIO, 44: SRC_LF_RADIO,
    19: SRC_HF_RADIO, 36: SRC_HF_RADIO,
    6: SRC_UHF_RADIO, 20: SRC_UHF_RADIO, 28: SRC_UHF_RADIO, 29: SRC_UHF_RADIO,
    30: SRC_UHF_RADIO, 46: SRC_UHF_RADIO,
    13: SRC_PPS, 22: SRC_PPS,
    18: SRC_TELEPHONE,
}  # fmt: skip

#: Why selection found a source unfit -> ntpd's flash bits (ntpq ``flash``).
_FLASH_BY_REASON = {
    "unsynchronized": 0x0004,  # pkt_unsync
    "stratum": 0x0200,  # peer_stratum
    "distance": 0x0400,  # peer_dist
    "loop": 0x0800,  # peer_loop
    "unreachable": 0x1000,  # peer_unreach
    "no pulses": 0x1000,
}

# -- value formats --------------------------------------------------------------------------------


def fmt_ms(seconds: float | None, digits: int = 3) -> str:
    """A duration in seconds as ntpd shows it: milliseconds with ``digits`` decimals."""
    if seconds is None or not math.isfinite(seconds):
        return f"{0:.{digits}f}"
    return f"{seconds * 1e3:.{digits}f}"


def fmt_timestamp(unix_ns: int) -> str:
    """``0x%08x.%08x``; 0 (never) stays the zero timestamp, as ntpd sends it."""
    stamp = ns_to_ntp64(unix_ns) if unix_ns else 0
    return f"0x{stamp >> 32:08x}.{stamp & 0xFFFFFFFF:08x}"


def quote(text: object) -> str:
    """A quoted string value; quotes and control characters cannot appear inside."""
    clean = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch != '"' else "?" for ch in str(text))
    return f'"{clean}"'


def fmt_refid(refid: bytes | str, as_address: bool = False) -> str:
    """Up to 4 printable characters (others become ``.``), or a dotted quad when the refid is
    an upstream server's address."""
    raw = refid.encode("ascii", "replace") if isinstance(refid, str) else bytes(refid)
    raw = raw[:4].ljust(4, b"\0")
    if as_address:
        return str(ipaddress.IPv4Address(raw))
    text = raw.rstrip(b"\0")
    return "".join(chr(b) if 0x21 <= b < 0x7F and b not in b',="' else "." for b in text)


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


def _call(obj: Any, name: str, default: Any = None) -> Any:
    """An attribute that may be a property or a method (the discipline's read-outs)."""
    value = getattr(obj, name, default)
    return value() if callable(value) else value


# -- the three variable sets ----------------------------------------------------------------------


def system_variables(
    snapshot: SystemSnapshot,
    now_ns: int,
    *,
    peer_is_network: bool = False,
    frequency_ppm: float = 0.0,
    clk_jitter: float = 0.0,
    clk_wander: float = 0.0,
    tai: int = 0,
    leapsec_ns: int = 0,
    expire_ns: int = 0,
    sysstats: Sequence[tuple[str, str]] = (),
) -> Variables:
    """``rv`` / ``rv 0`` in ntpd's default order (tai/leapsec/expire only when known);
    ``sysstats`` (the ``ss_*`` counters) may be asked for by name."""
    synced = snapshot.stratum < STRATUM_UNSYNC
    defaults: list[tuple[str, str]] = [
        ("version", quote(f"stratum1 {__version__}")),
        ("processor", quote(platform.machine() or "unknown")),
        ("system", quote(f"{platform.system()}/{platform.release()}")),
        ("leap", str(snapshot.leap & 3)),
        ("stratum", str(snapshot.stratum)),
        ("precision", str(snapshot.precision)),
        ("rootdelay", fmt_ms(snapshot.root_delay)),
        ("rootdisp", fmt_ms(snapshot.root_dispersion_at(now_ns))),
        ("refid", fmt_refid(snapshot.refid, synced and peer_is_network and snapshot.stratum > 1)),
        ("reftime", fmt_timestamp(snapshot.reference_ns)),
        ("clock", fmt_timestamp(now_ns)),
        ("peer", str(snapshot.system_peer_id)),
        ("tc", str(snapshot.poll)),
        ("mintc", str(MIN_SYS_POLL)),
        ("offset", fmt_ms(snapshot.offset, 6)),
        ("frequency", f"{_num(frequency_ppm):.6f}"),
        ("sys_jitter", fmt_ms(snapshot.jitter, 6)),
        ("clk_jitter", fmt_ms(_num(clk_jitter), 6)),
        ("clk_wander", f"{_num(clk_wander):.6f}"),
    ]
    if tai > 0:
        defaults.append(("tai", str(tai)))
    if leapsec_ns:
        defaults.append(("leapsec", _fmt_date(leapsec_ns)))
    if expire_ns:
        defaults.append(("expire", _fmt_date(expire_ns)))
    extra = [("rootdist", fmt_ms(snapshot.root_delay / 2 + snapshot.root_dispersion_at(now_ns)))]
    extra.extend(sysstats)
    return Variables(tuple(defaults), tuple(extra))


def _fmt_date(unix_ns: int) -> str:
    import time

    return time.strftime("%Y%m%d%H%M", time.gmtime(unix_ns // 1_000_000_000))


def peer_variables(
    assoc: Any,
    now_ns: int,
    *,
    srcadr: str,
    srchost: str | None = None,
    dstadr: str = "127.0.0.1",
    srcport: int = NTP_PORT,
    dstport: int = NTP_PORT,
) -> Variables:
    """``rv &N`` for one association (an ``stratum1.association.Association``) in ntpd's
    default order. Refclocks carry ``srchost="NAME(u)"``, which both ntpqs show as the remote
    name with type ``l``."""
    refclock = bool(getattr(assoc, "refclock", False))
    stratum = int(getattr(assoc, "stratum", STRATUM_UNSYNC))
    refid = getattr(assoc, "refid", b"")
    as_address = not refclock and 1 < stratum < STRATUM_UNSYNC
    stages = list(_call(assoc, "filter_stages", []) or [])
    flash = 0 if refclock and getattr(assoc, "reach", 0) else _FLASH_BY_REASON.get(
        getattr(assoc, "unfit_reason", None) or "", 0)
    items: list[tuple[str, str]] = [
        ("srcadr", srcadr),
        ("srcport", str(srcport)),
    ]
    if srchost:
        items.append(("srchost", quote(srchost)))
    items += [
        ("dstadr", dstadr),
        ("dstport", str(dstport)),
        ("leap", str(int(getattr(assoc, "leap", 3)) & 3)),
        ("stratum", str(stratum)),
        ("precision", str(int(getattr(assoc, "precision", 0)))),
        ("rootdelay", fmt_ms(_num(getattr(assoc, "root_delay", 0.0)))),
        ("rootdisp", fmt_ms(_num(getattr(assoc, "root_dispersion", 0.0)))),
        ("refid", fmt_refid(refid, as_address)),
        ("reftime", fmt_timestamp(int(getattr(assoc, "reference_ns", 0)))),
        ("rec", fmt_timestamp(int(getattr(assoc, "rec_ns", 0)))),
        ("reach", f"0x{int(getattr(assoc, 'reach', 0)):x}"),
        ("unreach", str(int(getattr(assoc, "unreach", 0)))),
        ("hmode", str(MODE_CLIENT)),
        ("pmode", str(MODE_SERVER)),
        ("hpoll", str(int(getattr(assoc, "poll", 6)))),
        ("ppoll", str(int(getattr(assoc, "ppoll", 6)))),
        ("headway", "0"),
        ("flash", f"0x{flash:x}"),
        ("keyid", "0"),
        ("offset", fmt_ms(_num(getattr(assoc, "offset", 0.0)), 6)),
        ("delay", fmt_ms(_num(getattr(assoc, "delay", 0.0)), 6)),
        ("dispersion", fmt_ms(_num(getattr(assoc, "dispersion", 0.0)), 6)),
        ("jitter", fmt_ms(_num(getattr(assoc, "jitter", 0.0)), 6)),
    ]
    if stages:
        items += [
            ("filtdelay", _filter_row(s.delay for s in stages)),
            ("filtoffset", _filter_row(s.offset for s in stages)),
            ("filtdisp", _filter_row(s.dispersion for s in stages)),
        ]
    rec_ns = int(getattr(assoc, "rec_ns", 0))
    extra = [
        ("received", str(int(getattr(assoc, "received", 0)))),
        ("timerec", str(max(0, (now_ns - rec_ns) // 1_000_000_000) if rec_ns else 0)),
        ("bogusorg", "0"),
        ("oldpkt", "0"),
        ("badauth", "0"),
        ("seldisp", str(int(getattr(assoc, "bad_samples", 0)))),
        ("selbroken", "0"),
        ("candidate", "0"),
    ]
    return Variables(tuple(items), tuple(extra))


def _filter_row(values: Iterable[float]) -> str:
    return " ".join(f"{_num(v) * 1e3:.2f}" for v in values)


def clock_variables(status: Mapping[str, Any], description: str = "") -> Variables:
    """``cv`` for one refclock unit from ``RefclockUnit.status()`` in ntpd's default order;
    the driver's own scalar status values follow as extra defaults."""
    items: list[tuple[str, str]] = []
    if description:
        items.append(("device", quote(description)))
    else:
        items.append(("type", str(int(status.get("type", 0)))))
    items += [
        ("timecode", quote(status.get("timecode") or "")),
        ("poll", str(int(status.get("poll", 0)))),
        ("noreply", str(int(status.get("noreply", 0)))),
        ("badformat", str(int(status.get("badformat", 0)))),
        ("baddata", str(int(status.get("baddata", 0)))),
    ]
    for name in ("fudgetime1", "fudgetime2"):
        value = _num(status.get(name))
        if value:
            items.append((name, fmt_ms(value)))
    items += [
        ("stratum", str(int(status.get("stratum", 0)))),
        ("refid", fmt_refid(str(status.get("refid", "")))),
        ("flags", str(int(status.get("flags", 0)))),
    ]
    taken = {name for name, _ in items}
    driver_status = status.get("driver_status") or {}
    for key, value in driver_status.items() if isinstance(driver_status, Mapping) else ():
        name = _var_name(str(key))
        if name and name not in taken:
            taken.add(name)
            items.append((name, _scalar(value)))
    items += unit_variables(status)
    extra: list[tuple[str, str]] = [("path", quote(status.get("device") or ""))]
    for name in ("state", "samples", "pulses", "faults", "last_fault", "event_text"):
        if name in status and name not in taken:
            extra.append((name, _scalar(status[name])))
    return Variables(tuple(items), tuple(extra))


#: Prefix of the clock variables that ``stratum1 drivers list`` reads; ntpq prints them as
#: it prints any driver's own variables, and no ntpd variable starts with it.
UNIT_PREFIX = "s1_"
#: Counters that mean bad input or unusable pulses, summed as ``s1_errors``.
ERROR_COUNTERS = ("badformat", "baddata", "badsamples", "ambiguous_pulses")


def unit_variables(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``s1_*`` clock variables from ``RefclockUnit.status()``: what ``drivers list``
    shows of a live unit. Unknown values (never sampled, no fault yet) are left out; times
    and offsets are seconds."""
    counters = status.get("counters")
    counters = counters if isinstance(counters, Mapping) else {}
    driver = status.get("driver_status")
    driver = driver if isinstance(driver, Mapping) else {}
    pps = driver.get("pps")
    pps = pps if isinstance(pps, Mapping) else {}
    values: list[tuple[str, Any, str]] = [
        ("address", status.get("address"), "s"),
        ("name", status.get("name"), "s"),
        ("driver", status.get("driver"), "s"),
        ("device", status.get("device"), "s"),
        ("state", status.get("state"), "s"),
        ("age", status.get("last_sample_age"), ".3f"),
        ("offset", status.get("offset"), ".9f"),
        ("jitter", status.get("jitter"), ".9f"),
        ("reach", status.get("reach"), "d"),
        ("pps", status.get("pps"), "b"),
        ("samples", status.get("samples"), "d"),
        ("pulses", status.get("pulses"), "d"),
        ("errors", sum(_int(counters.get(k)) for k in ERROR_COUNTERS), "d"),
        ("noreply", status.get("noreply"), "d"),
        ("faults", status.get("faults"), "d"),
        ("event", status.get("event_text"), "s"),
        ("fault", status.get("last_fault"), "s"),
        ("fault_age", status.get("last_fault_age"), ".3f"),
        ("retry_in", status.get("retry_in"), ".3f"),
        ("time2", driver.get("time2_suggested"), ".4f"),
        ("pps_device", pps.get("path"), "s"),
        ("pps_error", pps.get("error"), "s"),
    ]
    out = []
    for name, value, kind in values:
        text = _unit_value(value, kind)
        if text is not None:
            out.append((UNIT_PREFIX + name, text))
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _unit_value(value: Any, kind: str) -> str | None:
    if value is None or value == "" and kind == "s":
        return None
    if kind == "s":
        return quote(value)
    if kind == "b":
        return "1" if value else "0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind == "d":
        return str(int(value))
    return format(float(value), kind) if math.isfinite(value) else None


def _var_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)[:32]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else quote(value)
    return quote("" if value is None else value)


# -- the daemon adapter ---------------------------------------------------------------------------


class _EventLog:
    """An event code and its count as the status words carry them (saturating at 15,
    restarting when the code changes)."""

    __slots__ = ("code", "count")

    def __init__(self, code: int = 0, count: int = 0) -> None:
        self.code = code
        self.count = count

    def post(self, code: int) -> None:
        if code == self.code:
            self.count = min(15, self.count + 1)
        else:
            self.code, self.count = code, 1


class DaemonView:
    """``ControlView`` over a running ``stratum1.daemon.Daemon`` (read-only).

    Reads ``daemon.snapshot``, ``daemon.system`` (associations, system peer, discipline),
    ``daemon.sources`` (each with ``.association`` and ``.unit``) and ``daemon.clock``.
    System events (restart, clock_sync, no_system_peer, clock_step) are noticed by comparing
    successive snapshots when a query arrives.
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self._sys_events = _EventLog(SYS_EVNT_RESTART, 1)
        self._synced = False
        self._stepped = False
        self._clock_events: dict[int, _EventLog] = {}
        self._clock_current: dict[int, int] = {}

    # -- helpers ----------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self.daemon.clock.now_ns())

    def _snapshot(self) -> SystemSnapshot:
        snap = getattr(self.daemon, "snapshot", None)
        if snap is None:
            snap = self.daemon.get_snapshot()
        self._observe(snap)
        return snap

    def _observe(self, snap: SystemSnapshot) -> None:
        synced = snap.synchronized
        stepped = snap.refid == b"STEP" and not synced
        if stepped and not self._stepped:
            self._sys_events.post(SYS_EVNT_CLOCK_STEP)
        elif synced and not self._synced:
            self._sys_events.post(SYS_EVNT_CLOCK_SYNC)
        elif not synced and self._synced and not stepped:
            self._sys_events.post(SYS_EVNT_NO_SYS_PEER)
        self._synced, self._stepped = synced, stepped

    def _associations(self) -> list[Any]:
        system = getattr(self.daemon, "system", None)
        if system is not None:
            return list(system.associations)
        return [s.association for s in self.daemon.sources]

    def _sources(self) -> dict[int, Any]:
        return {s.association.assoc_id: s for s in getattr(self.daemon, "sources", ())}

    def _find(self, assoc_id: int) -> Any | None:
        for a in self._associations():
            if a.assoc_id == assoc_id:
                return a
        return None

    # -- ControlView ------------------------------------------------------------------------
    def leap(self) -> int:
        return self._snapshot().leap & 3

    def system_status(self) -> int:
        snap = self._snapshot()
        return system_status(snap.leap, self._source_code(snap), self._sys_events.count,
                             self._sys_events.code)

    def _source_code(self, snap: SystemSnapshot) -> int:
        if not snap.system_peer_id:
            return SRC_UNSPEC
        peer = self._find(snap.system_peer_id)
        if peer is None:
            return SRC_UNSPEC
        if getattr(peer, "pps", False):
            return SRC_PPS
        if not getattr(peer, "refclock", False):
            return SRC_NTP
        source = self._sources().get(peer.assoc_id)
        kind = getattr(getattr(source, "unit", None), "config", None)
        return _SOURCE_BY_TYPE.get(int(getattr(kind, "type", -1)), SRC_OTHER)

    def system_variables(self) -> Variables:
        snap = self._snapshot()
        now = self._now()
        system = getattr(self.daemon, "system", None)
        discipline = getattr(self.daemon, "discipline", None) or getattr(system, "discipline", None)
        peer = self._find(snap.system_peer_id) if snap.system_peer_id else None
        tai, leapsec_ns, expire_ns = self._leap_table(now)
        return system_variables(
            snap,
            now,
            peer_is_network=peer is not None and not getattr(peer, "refclock", False),
            frequency_ppm=_num(_call(discipline, "frequency_ppm", 0.0)),
            clk_jitter=_num(_call(discipline, "jitter", 0.0)),
            clk_wander=_num(_call(discipline, "wander", 0.0)),
            tai=tai,
            leapsec_ns=leapsec_ns,
            expire_ns=expire_ns,
            sysstats=self._sysstats(now),
        )

    def _sysstats(self, now_ns: int) -> list[tuple[str, str]]:
        sysstats = getattr(self.daemon, "sysstats", None)
        if sysstats is None:
            return []
        from .sysstats import server_counters

        requests = server_counters(getattr(self.daemon, "servers", ())).get("control", 0)
        return sysstats.variables(now_ns, requests)

    def _leap_table(self, now_ns: int) -> tuple[int, int, int]:
        """(TAI-UTC, time of the table's last leap, expiry) from the leap file, 0 if unknown."""
        table = getattr(getattr(self.daemon, "leap", None), "table", None)
        if table is None:
            return 0, 0, 0
        try:
            tai = table.tai_offset(now_ns) or 0
            entries = list(table.entries)
            leapsec = int(entries[-1].unix_ns) if entries else 0
            expire = table.expires_ns or 0
        except (AttributeError, TypeError, ValueError):
            return 0, 0, 0
        return int(tai), leapsec, int(expire)

    def association_status(self) -> list[tuple[int, int]]:
        return [(a.assoc_id, self._peer_status(a)) for a in self._associations()]

    def _peer_status(self, a: Any) -> int:
        flags = PEER_CONFIG | (PEER_REACH if getattr(a, "reach", 0) else 0)
        return peer_status(flags, int(getattr(a, "select_code", 0)),
                           int(getattr(a, "event_count", 0)), int(getattr(a, "last_event", 0)))

    def peer(self, assoc_id: int) -> tuple[int, Variables] | None:
        a = self._find(assoc_id)
        if a is None:
            return None
        source = self._sources().get(assoc_id)
        unit = getattr(source, "unit", None)
        if getattr(a, "refclock", False):
            srcadr = str(getattr(unit, "address", None) or a.name)
            srchost = getattr(unit, "name", None) or srcadr
            variables = peer_variables(a, self._now(), srcadr=srcadr, srchost=srchost)
        else:
            address = getattr(a, "address", None) or a.name
            host = a.name if a.name != address else None
            variables = peer_variables(a, self._now(), srcadr=str(address), srchost=host,
                                       dstadr=self._local_address())
        return self._peer_status(a), variables

    def _local_address(self) -> str:
        servers = getattr(self.daemon, "servers", ())
        for server in servers:
            host = server.address[0]
            if host not in ("0.0.0.0", "::"):
                return str(host)
        return "0.0.0.0"

    def clock(self, assoc_id: int) -> tuple[int, Variables] | None:
        sources = self._sources()
        if assoc_id == 0:
            snap = self._snapshot()
            chosen = sources.get(snap.system_peer_id)
            if chosen is None and sources:
                chosen = sources[min(sources)]
        else:
            chosen = sources.get(assoc_id)
        unit = getattr(chosen, "unit", None)
        if chosen is None or unit is None:
            return None
        status = unit.status(self._now())
        event = int(status.get("event", 0))
        assoc_id = chosen.association.assoc_id
        log = self._clock_events.setdefault(assoc_id, _EventLog())
        # Only the current event is visible here: count each change to a non-nominal one.
        if event and event != self._clock_current.get(assoc_id, 0):
            log.post(event)
        self._clock_current[assoc_id] = event
        description = getattr(getattr(unit, "driver_cls", None), "description", "") or ""
        return clock_status(event, log.count, log.code), clock_variables(status, description)


__all__ = [
    "DaemonView",
    "clock_variables",
    "fmt_ms",
    "fmt_refid",
    "fmt_timestamp",
    "peer_variables",
    "quote",
    "system_variables",
    "unit_variables",
]
