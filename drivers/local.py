"""LOCAL (type 1): the undisciplined local clock, served at its fudged stratum as a last resort."""

from __future__ import annotations

from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.registry import register
from stratum1.sample import Sample


@register
class LocalDriver(RefclockDriver):
    """Each poll, one sample saying the local clock is right, give or take the fudges.

    time1 (added by the framework) shifts the offset; time2 (PPM) makes it grow with the time
    since the unit opened, which steers the discipline to run the clock at that frequency.
    """

    type = 1
    name = "local"
    ntpq_name = "LOCAL"
    description = "Undisciplined local clock (last resort; orphan mode is better)"
    refid = "LOCL"
    precision = -7
    stratum = 5
    rootdisp = 0.01  # ntpd's LOCAL: 10 ms of root dispersion
    fudge_meanings = {
        "time1": "offset added to the local clock reading, seconds",
        "time2": "frequency offset, PPM",
    }

    def open(self) -> None:
        self._opened_ns = self.ctx.clock.now_ns()

    def on_poll(self) -> None:
        now = self.ctx.clock.now_ns()
        ppm = self.config.time2 or 0.0
        drift_ns = round((now - self._opened_ns) * ppm * 1e-6)
        self.ctx.add_sample(Sample(now, now + drift_ns))

    def status(self) -> dict[str, object]:
        return {"device": "(local clock)"}
