"""``stratum1 drivers list``: every driver, what it needs and whether that is here, every
configured unit and its live state, and candidate devices with the config line for each."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .refclock.discover import DeviceRecord, candidates, udev_records
from .refclock.presence import Prober
from .refclock.registry import all_drivers, lookup

if TYPE_CHECKING:
    from .config.model import Config

DEFAULT_CONFIG = "/etc/stratum1/ntp.conf"


def render(
    config: Config | None,
    live: list[dict[str, Any]] | None,
    as_json: bool,
    *,
    prober: Prober | None = None,
    records: Callable[[], Iterable[DeviceRecord]] = udev_records,
) -> str:
    """The report as text (tables) or JSON. ``live`` is the daemon's ``RefclockUnit.status()``
    list when a daemon runs; otherwise units are described from ``config`` alone."""
    report = build_report(config, live, prober=prober, records=records)
    if as_json:
        return json.dumps(report, indent=2, sort_keys=True)
    return format_report(report)


def build_report(
    config: Config | None,
    live: list[dict[str, Any]] | None,
    *,
    prober: Prober | None = None,
    records: Callable[[], Iterable[DeviceRecord]] = udev_records,
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
        counters = st.get("counters") or {}
        errors = sum(
            int(counters.get(k, 0))
            for k in ("badformat", "baddata", "badsamples", "ambiguous_pulses")
        )
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
                "samples": int(st.get("samples") or 0) + int(st.get("pulses") or 0),
                "errors": errors,
                "faults": st.get("faults"),
                "noreply": st.get("noreply"),
                "last_fault": st.get("last_fault"),
                "event_text": st.get("event_text"),
            }
        )
    return units


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
    title = {"daemon": "Units (live)", "config": "Units (from the configuration; daemon not running)"}
    out.append(title.get(source, "Units"))
    if not report["units"]:
        out.append("  (no refclocks configured)")
    elif source == "daemon":
        out += _table(
            ("UNIT", "ADDRESS", "DEVICE", "OPEN", "AGE", "OFFSET", "JITTER", "REACH", "SAMPLES",
             "ERRORS", "LAST FAULT"),
            [
                (
                    u["name"] or "?",
                    u["address"] or "?",
                    u["device"] or "-",
                    "yes" if u["opened"] else "NO",
                    _secs(u["last_sample_age"], "{:.0f}s"),
                    _secs(u["offset"], "{:+.6f}"),
                    _secs(u["jitter"], "{:.6f}"),
                    "-" if u["reach"] is None else f"{int(u['reach']):o}",
                    str(u["samples"]),
                    str(u["errors"]),
                    u["last_fault"] or "-",
                )
                for u in report["units"]
            ],
        )
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
def main(conffile: str | None, as_json: bool, live: list[dict[str, Any]] | None = None) -> int:
    """``stratum1 drivers list [-c FILE] [--json]``. Without -c the default configuration is
    read when it exists. Returns the exit status (1 when the configuration has errors)."""
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
    sys.stdout.write(render(config, live, as_json) + ("\n" if as_json else ""))
    return status
