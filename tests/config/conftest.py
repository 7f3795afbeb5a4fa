"""Stand-in refclock drivers for the config tests, so they do not depend on the real drivers
(which colleagues write in parallel): local 1, nmea 20, pps 22, shm 28, gpsd 46."""

from __future__ import annotations

import pytest

from stratum1.refclock import registry
from stratum1.refclock.driver import RefclockDriver


class StandinLocal(RefclockDriver):
    type, name, ntpq_name, refid = 1, "local", "LOCAL", "LOCL"
    fudge_meanings = {"time1": "offset", "time2": "frequency, PPM"}


class StandinNmea(RefclockDriver):
    type, name, ntpq_name, refid = 20, "nmea", "GPS_NMEA", "GPS"
    fudge_meanings = {"time1": "PPS offset", "time2": "serial end-of-line delay",
                      "flag1": "PPS", "flag2": "clear edge", "flag3": "kernel PPS",
                      "flag4": "obscure position"}
    options = frozenset({"path", "ppspath", "baud", "mode"})
    mode_range = (0, 0x7FFFFFFF)


class StandinPps(RefclockDriver):
    type, name, ntpq_name, refid = 22, "pps", "PPS", "PPS"
    fudge_meanings = {"time1": "offset", "flag2": "clear edge", "flag3": "kernel PPS",
                      "flag4": "log offsets"}
    options = frozenset({"path", "ppspath"})


class StandinShm(RefclockDriver):
    type, name, ntpq_name, refid = 28, "shm", "SHM", "SHM"
    fudge_meanings = {"time1": "offset", "time2": "max difference", "flag1": "skip check",
                      "flag4": "clockstats"}
    mode_range = (0, 1)
    max_unit = 255


class StandinGpsd(RefclockDriver):
    type, name, ntpq_name, refid = 46, "gpsd", "GPSD_JSON", "GPSD"
    fudge_meanings = {"time1": "PPS offset", "time2": "serial offset", "flag1": "PPS peer",
                      "flag2": "ignore PPS", "flag3": "no throttle", "flag4": "clockstats"}
    options = frozenset({"path"})
    mode_range = (0, 2)
    max_unit = 255


STANDINS: tuple[type[RefclockDriver], ...] = (StandinLocal, StandinNmea, StandinPps, StandinShm,
                                              StandinGpsd)


@pytest.fixture(autouse=True)
def standin_drivers(monkeypatch: pytest.MonkeyPatch) -> dict[object, type[RefclockDriver]]:
    """Replace registry.lookup with a table of the stand-ins (by type and by name)."""
    table: dict[object, type[RefclockDriver]] = {}
    for cls in STANDINS:
        table[cls.type] = cls
        table[cls.name] = cls

    def lookup(key: int | str) -> type[RefclockDriver] | None:
        return table.get(key if isinstance(key, int) else key.lower())

    monkeypatch.setattr(registry, "lookup", lookup)
    return table
