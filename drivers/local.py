"""LOCAL (type 1): the undisciplined local clock, served at its fudged stratum as a last resort."""

from __future__ import annotations

from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register


@register
class LocalDriver(RefclockDriver):
    type = 1
    name = "local"
    ntpq_name = "LOCAL"
    description = "Undisciplined local clock (last resort; orphan mode is better)"
    refid = "LOCL"
    precision = -7
    stratum = 5
    fudge_meanings = {
        "time1": "offset added to the local clock reading, seconds",
        "time2": "frequency offset, PPM",
    }
