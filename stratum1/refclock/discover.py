"""Finding candidate time sources: USB GPS receivers by vendor id, PPS devices, GPIO chips,
each with the ntp.conf line that would use it.

``udev_records()`` reads the udev database (pyudev) and, without it, falls back to /dev and
/sys; ``candidates()`` is a pure function from those records, which is what tests exercise.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: USB ids that are GNSS receivers (gpsd's udev rules; ecosystem notes C.3).
KNOWN_GPS: dict[tuple[str, str], str] = {
    ("1546", "01a5"): "u-blox 5",
    ("1546", "01a6"): "u-blox 6",
    ("1546", "01a7"): "u-blox 7",
    ("1546", "01a8"): "u-blox 8",
    ("1546", "01a9"): "u-blox 9",
    ("091e", "0003"): "Garmin",
    ("0e8d", "3329"): "MediaTek (Holux)",
    ("1163", "0100"): "DeLorme",
    ("1163", "0200"): "DeLorme",
    ("067b", "aaa0"): "Prolific PS-360",
    ("0557", "2008"): "ATEN",
    ("10c4", "ea71"): "Silicon Labs CP210x GPS",
}
#: Generic USB serial adapters that many GPS pucks use, but so does everything else: listed as
#: "maybe GPS" (gpsd disables these rules on purpose).
MAYBE_GPS: dict[tuple[str, str], str] = {
    ("0403", "6001"): "FTDI FT232 serial adapter",
    ("067b", "2303"): "Prolific PL2303 serial adapter (e.g. BU-353S4)",
    ("10c4", "ea60"): "Silicon Labs CP210x serial adapter",
}
#: GPIO chip labels of Raspberry Pi header pins (never hard-code gpiochipN: Pi 5 renumbers).
PI_GPIO_LABELS = frozenset({"pinctrl-bcm2711", "pinctrl-bcm2835", "pinctrl-rp1"})


@dataclass
class DeviceRecord:
    """One device as udev (or /sys) describes it."""

    subsystem: str  # "tty", "pps", "gpio", "gnss"
    node: str  # /dev/...
    links: list[str] = field(default_factory=list)
    vendor_id: str = ""
    model_id: str = ""
    label: str = ""  # PPS source name, GPIO chip label, USB product


def candidates(
    records: Iterable[DeviceRecord], used_units: dict[str, set[int]] | None = None
) -> list[dict[str, Any]]:
    """Each record that could be a time source, with a suggested ntpsec ``refclock`` line.

    ``used_units`` maps a driver name to the unit numbers already configured, so suggestions
    do not collide with them.
    """
    used = {k: set(v) for k, v in (used_units or {}).items()}

    def next_unit(driver: str) -> int:
        taken = used.setdefault(driver, set())
        u = 0
        while u in taken:
            u += 1
        taken.add(u)
        return u

    out: list[dict[str, Any]] = []
    order = {"gnss": 0, "tty": 1, "pps": 2, "gpio": 3}  # kernel PPS before raw GPIO lines
    for rec in sorted(records, key=lambda r: (order.get(r.subsystem, 9), r.node)):
        key = (rec.vendor_id.lower(), rec.model_id.lower())
        if rec.subsystem in ("tty", "gnss"):
            if rec.subsystem == "gnss":
                kind, what = "gps", rec.label or "kernel GNSS device"
            elif key in KNOWN_GPS:
                kind, what = "gps", KNOWN_GPS[key]
            elif key in MAYBE_GPS:
                kind, what = "maybe-gps", MAYBE_GPS[key]
            else:
                continue
            path = _stable_path(rec)
            line = f"refclock nmea unit {next_unit('nmea')} path {path} baud 9600"
            out.append(_candidate(kind, rec, what, path, line))
        elif rec.subsystem == "pps":
            line = f"refclock pps unit {next_unit('pps')} path {rec.node}"
            out.append(_candidate("pps", rec, rec.label or "PPS source", rec.node, line))
        elif rec.subsystem == "gpio":
            label = rec.label or os.path.basename(rec.node)
            if rec.label in PI_GPIO_LABELS:
                path = "gpio:GPIO18"
                note = "Raspberry Pi header; GPIO18 is the usual PPS pin, use yours"
            else:
                path = f"gpio:{label}:OFFSET"
                note = "replace OFFSET with the line your PPS wire is on"
            line = f"refclock pps unit {next_unit('pps')} path {path}"
            out.append(_candidate("gpiochip", rec, f"GPIO chip {label} ({note})", path, line))
    return out


def _stable_path(rec: DeviceRecord) -> str:
    """/dev/serial/by-id/... survives replugging and renumbering; ttyACMn does not."""
    for link in sorted(rec.links):
        if link.startswith("/dev/serial/by-id/"):
            return link
    return rec.node


def _candidate(kind: str, rec: DeviceRecord, what: str, path: str, line: str) -> dict[str, Any]:
    usb = f"{rec.vendor_id}:{rec.model_id}" if rec.vendor_id else ""
    return {"kind": kind, "device": rec.node, "path": path, "usb": usb, "what": what,
            "config": line}


def udev_records() -> list[DeviceRecord]:
    """Every tty, gnss, pps and gpio device known to udev; /dev and /sys without pyudev."""
    try:
        import pyudev

        context = pyudev.Context()
    except Exception:  # no pyudev or no libudev: fall back to the file system
        return _sysfs_records()
    records: list[DeviceRecord] = []
    for subsystem in ("tty", "gnss", "pps", "gpio"):
        try:
            devices = list(context.list_devices(subsystem=subsystem))
        except Exception:
            continue
        for dev in devices:
            node = dev.device_node
            if not node:
                continue
            props = dev.properties
            label = ""
            if subsystem in ("pps", "gpio"):
                label = _attr(dev, "name") or _attr(dev, "label") or _gpio_label(node)
            else:
                label = props.get("ID_MODEL", "")
            records.append(
                DeviceRecord(
                    subsystem=subsystem,
                    node=node,
                    links=list(dev.device_links),
                    vendor_id=props.get("ID_VENDOR_ID", ""),
                    model_id=props.get("ID_MODEL_ID", ""),
                    label=label,
                )
            )
    return records


def _attr(dev: Any, name: str) -> str:
    try:
        value = dev.attributes.get(name)
    except Exception:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    return str(value).strip() if value else ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _gpio_label(node: str) -> str:
    name = os.path.basename(node)
    label = _read(f"/sys/bus/gpio/devices/{name}/label") or _read(f"/sys/class/gpio/{name}/label")
    if label:
        return label
    try:
        import gpiod

        with gpiod.Chip(node) as chip:
            return str(chip.get_info().label)
    except Exception:
        return ""


def _sysfs_records() -> list[DeviceRecord]:
    records: list[DeviceRecord] = []
    by_id: dict[str, list[str]] = {}
    for link in glob.glob("/dev/serial/by-id/*"):
        by_id.setdefault(os.path.realpath(link), []).append(link)
    for node in sorted(glob.glob("/dev/ttyACM*") + glob.glob("/dev/ttyUSB*")):
        sys_dev = os.path.realpath(f"/sys/class/tty/{os.path.basename(node)}/device")
        # the USB device directory (with idVendor) is a parent of the interface
        vid = pid = ""
        for up in (sys_dev, os.path.dirname(sys_dev), os.path.dirname(os.path.dirname(sys_dev))):
            vid, pid = _read(f"{up}/idVendor"), _read(f"{up}/idProduct")
            if vid:
                break
        records.append(DeviceRecord("tty", node, by_id.get(node, []), vid, pid))
    for node in sorted(glob.glob("/dev/pps[0-9]*")):
        label = _read(f"/sys/class/pps/{os.path.basename(node)}/name")
        records.append(DeviceRecord("pps", node, label=label))
    for node in sorted(glob.glob("/dev/gpiochip[0-9]*")):
        records.append(DeviceRecord("gpio", node, label=_gpio_label(node)))
    return records
