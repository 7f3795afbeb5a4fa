"""``stratum1 drivers list``: every driver, what it needs and whether that is here, every
configured unit and its live state, and candidate devices with the config line for each."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .controlvars import ERROR_COUNTERS, UNIT_PREFIX
from .query import split_hostport
from .refclock.discover import DeviceRecord, candidates, udev_records
from .refclock.presence import Prober
from .refclock.registry import all_drivers, lookup

if TYPE_CHECKING:
    from .config.model import Config

DEFAULT_CONFIG = "/etc/stratum1/ntp.conf"
DEFAULT_HOST = "127.0.0.1:123"
#: How long to wait for the daemon before describing units from the configuration alone.
DEFAULT_TIMEOUT_S = 1.0
#: Association limit: a server with more than this many is not ours to list exhaustively.
MAX_ASSOCIATIONS = 512


def render(
    config: Config | None,
    live: list[dict[str, Any]] | None,
    as_json: bool,
    *,
    prober: Prober | None = None,
    records: Callable[[], Iterable[DeviceRecord]] = udev_records,
    daemon: dict[str, Any] | None = None,
) -> str:
    """The report as text (tables) or JSON. ``live`` is the daemon's ``RefclockUnit.status()``
    list (or ``query_daemon``'s) when a daemon runs; otherwise units are described from
    ``config`` alone. ``daemon`` says where the daemon was asked and why it did not answer."""
    report = build_report(config, live, prober=prober, records=records, daemon=daemon)
    if as_json:
        return json.dumps(report, indent=2, sort_keys=True)
    return format_report(report)


def build_report(
    config: Config | None,
    live: list[dict[str, Any]] | None,
    *,
    prober: Prober | None = None,
    records: Callable[[], Iterable[DeviceRecord]] = udev_records,
    daemon: dict[str, Any] | None = None,
) -> dict[str, Any]:
    prober = prober or Prober()
    drivers = []
    for cls in all_drivers():
        presence = prober.check_all(list(cls.requires))
        drivers.append(
            {
                "type": cls.type,
                "name": cls.name,
                "ntpq_name": cls.ntpq_name,
                "refid": cls.refid,
                "description": cls.description,
                "needs": list(cls.requires),
                "present": presence.present,
                "detail": presence.detail,
            }
        )
    units = _live_units(live) if live is not None else _config_units(config)
    if live is not None:
        where = {rc.address: str(rc.location) for rc in getattr(config, "refclocks", ()) or ()
                 if rc.location is not None}
        for u in units:
            u["location"] = where.get(u["address"] or "")
    used: dict[str, set[int]] = {}
    for rc in getattr(config, "refclocks", ()) or ():
        cls = lookup(rc.type)
        used.setdefault(cls.name if cls else rc.driver, set()).add(rc.unit)
    try:
        found = candidates(records(), used)
    except Exception as exc:  # discovery is a convenience; never fail the report over it
        found = []
        discovery_error: str | None = str(exc)
    else:
        discovery_error = None
    return {
        "source": "daemon" if live is not None else ("config" if config is not None else "none"),
        "daemon": daemon,
        "drivers": drivers,
        "units": units,
        "candidates": found,
        "discovery_error": discovery_error,
    }


def _config_units(config: Config | None) -> list[dict[str, Any]]:
    units = []
    for rc in getattr(config, "refclocks", ()) or ():
        cls = lookup(rc.type)
        if rc.path:
            device = rc.path
        elif cls is not None and cls.devices:
            device = cls.device_paths(rc.unit)[0]
        else:
            device = ""
        exists = None
        if device.startswith("/"):
            exists = os.path.exists(device)
        units.append(
            {
                "address": rc.address,
                "name": f"{cls.ntpq_name}({rc.unit})" if cls else f"?({rc.unit})",
                "driver": cls.name if cls else rc.driver,
                "device": device,
                "device_exists": exists,
                "opened": None,
                "state": "not running",
                "location": str(rc.location) if rc.location is not None else None,
                "last_fault": None if cls else f"no driver for type {rc.type}",
            }
        )
    return units


def _live_units(live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    units = []
    for st in live:
        if "errors" in st:
            errors = int(st.get("errors") or 0)
        else:
            counters = st.get("counters") or {}
            errors = sum(int(counters.get(k, 0)) for k in ERROR_COUNTERS)
        driver_status = st.get("driver_status") or {}
        pps = driver_status.get("pps") if isinstance(driver_status, dict) else None
        pps = pps if isinstance(pps, dict) else {}
        units.append(
            {
                "address": st.get("address"),
                "name": st.get("name"),
                "driver": st.get("driver"),
                "device": st.get("device"),
                "device_exists": None,
                "opened": st.get("opened"),
                "state": st.get("state"),
                "last_sample_age": st.get("last_sample_age"),
                "offset": st.get("offset"),
                "jitter": st.get("jitter"),
                "reach": st.get("reach"),
                "pps": st.get("pps"),
                "samples": int(st.get("samples") or 0) + int(st.get("pulses") or 0),
                "errors": errors,
                "faults": st.get("faults"),
                "noreply": st.get("noreply"),
                "last_fault": st.get("last_fault"),
                "last_fault_age": st.get("last_fault_age"),
                "retry_in": st.get("retry_in"),
                "event_text": st.get("event_text"),
                "time2_suggested": st.get("time2_suggested", driver_status.get("time2_suggested")
                                          if isinstance(driver_status, dict) else None),
                "pps_device": st.get("pps_device", pps.get("path")),
                "pps_error": st.get("pps_error", pps.get("error")),
            }
        )
    return units


# -- the live daemon --------------------------------------------------------------------------
def query_daemon(
    host: str = DEFAULT_HOST, timeout: float = DEFAULT_TIMEOUT_S
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Ask the daemon at ``host`` (HOST, HOST:PORT, [IPv6]:PORT) over mode 6 for every
    refclock association: ``(units, None)``, or ``(None, why)`` when nothing usable answered.

    Each unit is a dict with ``RefclockUnit.status()``'s keys, read from the ``s1_*`` clock
    variables; from an ntpd (no ``s1_*``) what its ``rv``/``cv`` carry is filled in instead.
    """
    from .status import ControlClient, Mode6Error

    try:
        name, port = split_hostport(host, 123)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        return None, f"bad daemon address {host!r}: expected HOST or HOST:PORT"
    where = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    try:
        with ControlClient(name, port, timeout) as client:
            # Connected, so a closed port is refused at once instead of timing out.
            client.sock.connect(client.address)
            units = []
            for assoc_id, _status in client.associations()[:MAX_ASSOCIATIONS]:
                try:
                    peer = client.read_variables(assoc_id)
                    if not peer.get("srcadr", "").startswith("127.127."):
                        continue
                    clock = client.read_clock(assoc_id)
                except Mode6Error:
                    continue  # gone between the list and the read, or not a clock
                units.append(unit_from_variables(peer, clock))
    except TimeoutError:
        return None, f"no answer from {where}"
    except Mode6Error as exc:
        return None, f"{where} refused the query: {exc}"
    except OSError as exc:
        return None, f"cannot query {where}: {exc.strerror or exc}"
    return units, None


def unit_from_variables(peer: dict[str, str], clock: dict[str, str]) -> dict[str, Any]:
    """One unit's status-like dict from its ``rv &N`` and ``cv &N`` values."""
    s1 = {k[len(UNIT_PREFIX):]: v for k, v in clock.items() if k.startswith(UNIT_PREFIX)}
    if s1:
        reach = _to_int(s1.get("reach"))
        offset, jitter = _to_float(s1.get("offset")), _to_float(s1.get("jitter"))
        errors = _to_int(s1.get("errors")) or 0
    else:  # not ours (an ntpd): what rv and cv say, in ntpd's units
        reach = _to_int(peer.get("reach"))
        offset, jitter = _ms(peer.get("offset")), _ms(peer.get("jitter"))
        errors = (_to_int(clock.get("badformat")) or 0) + (_to_int(clock.get("baddata")) or 0)
    state = s1.get("state")
    return {
        "address": s1.get("address") or peer.get("srcadr"),
        "name": s1.get("name") or peer.get("srchost") or peer.get("srcadr"),
        "driver": s1.get("driver") or clock.get("device"),
        "device": s1.get("device") or "",
        "state": state,
        "opened": None if state is None else state == "open",
        "last_sample_age": _to_float(s1.get("age")),
        "offset": offset,
        "jitter": jitter,
        "reach": reach,
        "pps": None if "pps" not in s1 else s1["pps"] == "1",
        "samples": _to_int(s1.get("samples")) or 0,
        "pulses": _to_int(s1.get("pulses")) or 0,
        "errors": errors,
        "faults": _to_int(s1.get("faults")),
        "noreply": _to_int(s1.get("noreply", clock.get("noreply"))),
        "last_fault": s1.get("fault"),
        "last_fault_age": _to_float(s1.get("fault_age")),
        "retry_in": _to_float(s1.get("retry_in")),
        "event_text": s1.get("event"),
        "time2_suggested": _to_float(s1.get("time2")),
        "pps_device": s1.get("pps_device"),
        "pps_error": s1.get("pps_error"),
    }


def _to_int(text: str | None) -> int | None:
    if not text:
        return None
    try:
        if len(text) > 1 and text[0] == "0" and text.isdigit():
            return int(text, 8)  # C's leading-zero octal (reach from some servers)
        return int(text, 0)
    except ValueError:
        return None


def _to_float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is None or math.isfinite(value) else None


def _ms(text: str | None) -> float | None:
    value = _to_float(text)
    return None if value is None else value / 1e3


# -- text -------------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    out: list[str] = ["Drivers"]
    out += _table(
        ("TYPE", "NAME", "REFID", "NEEDS", "PRESENT", "DETAIL"),
        [
            (
                str(d["type"]),
                d["name"],
                d["refid"],
                ", ".join(d["needs"]) or "-",
                "yes" if d["present"] else "NO",
                d["detail"],
            )
            for d in report["drivers"]
        ],
    )
    out.append("")
    source = report["source"]
    daemon = report.get("daemon") or {}
    if source == "daemon":
        title = f"Units (live, from the daemon at {daemon['host']})" if daemon.get("host") \
            else "Units (live)"
    elif source == "config":
        why = f": {daemon['error']}" if daemon.get("error") else ""
        title = f"Units (from the configuration; daemon not running{why})"
    else:
        title = "Units"
    out.append(title)
    if not report["units"]:
        out.append("  (no refclocks configured)")
    elif source == "daemon":
        out += _table(
            ("UNIT", "ADDRESS", "DEVICE", "STATE", "AGE", "OFFSET", "JITTER", "REACH",
             "SAMPLES", "ERRORS", "LAST FAULT"),
            [
                (
                    u["name"] or "?",
                    u["address"] or "?",
                    u["device"] or "-",
                    u["state"] or "?",
                    _secs(u["last_sample_age"], "{:.0f}s"),
                    _secs(u["offset"], "{:+.6f}"),
                    _secs(u["jitter"], "{:.6f}"),
                    "-" if u["reach"] is None else f"{int(u['reach']):o}",
                    str(u["samples"]),
                    str(u["errors"]),
                    _fault_text(u),
                )
                for u in report["units"]
            ],
        )
        out += _notes(report["units"])
    else:
        out += _table(
            ("UNIT", "ADDRESS", "DEVICE", "PRESENT", "CONFIG", "NOTE"),
            [
                (
                    u["name"],
                    u["address"],
                    u["device"] or "-",
                    {True: "yes", False: "NO", None: "-"}[u["device_exists"]],
                    u["location"] or "-",
                    u["last_fault"] or "",
                )
                for u in report["units"]
            ],
        )
    out.append("")
    out.append("Candidate devices")
    if report["candidates"]:
        out += _table(
            ("KIND", "DEVICE", "USB", "WHAT", "CONFIG LINE"),
            [
                (c["kind"], c["device"], c["usb"] or "-", c["what"], c["config"])
                for c in report["candidates"]
            ],
        )
    else:
        out.append("  (none found)")
    if report.get("discovery_error"):
        out.append(f"  device discovery failed: {report['discovery_error']}")
    return "\n".join(out) + "\n"


def _fault_text(u: dict[str, Any]) -> str:
    text = u["last_fault"] or "-"
    if u.get("state") == "fault" and u.get("retry_in") is not None:
        text += f" (retry in {u['retry_in']:.0f}s)"
    return text


def _notes(units: list[dict[str, Any]]) -> list[str]:
    """What the table has no room for: PPS trouble and the measured serial delay."""
    notes = []
    for u in units:
        name = u["name"] or u["address"] or "?"
        if u.get("pps_error"):
            error = str(u["pps_error"])
            dev = f" {u['pps_device']}" if u.get("pps_device") else ""
            notes.append(f"  {name}: {error}" if error.startswith("PPS")
                         else f"  {name}: PPS{dev}: {error}")
        t2 = u.get("time2_suggested")
        if t2 is not None:
            notes.append(f"  {name}: the PPS edge measures the sentence delay: "
                         f"fudge {u['address']} time2 {t2:.4f}")
    return notes


def _secs(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        return ("  " + "  ".join(parts + [cells[-1]])).rstrip()

    return [line(header)] + [line(r) for r in rows]


# -- command ----------------------------------------------------------------------------------
def main(
    conffile: str | None,
    as_json: bool,
    live: list[dict[str, Any]] | None = None,
    *,
    host: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """``stratum1 drivers list [-c FILE] [--json] [--host HOST[:PORT]]``. Units come from the
    daemon at ``host`` (default 127.0.0.1:123) when it answers within ``timeout`` seconds,
    else from the configuration: ``-c FILE``, or the default one when it exists. Returns the
    exit status (1 when the configuration has errors)."""
    config = None
    status = 0
    path = conffile or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is not None:
        from .config.parser import parse_file

        try:
            config, diagnostics = parse_file(path)
        except OSError as exc:
            print(f"stratum1: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        for d in diagnostics:
            print(d, file=sys.stderr)
        if any(d.severity == "error" for d in diagnostics):
            status = 1
    daemon: dict[str, Any] | None = None
    if live is None:
        where = host or DEFAULT_HOST
        live, error = query_daemon(where, timeout)
        daemon = {"host": where, "error": error}
    sys.stdout.write(render(config, live, as_json, daemon=daemon) + ("\n" if as_json else ""))
    return status
