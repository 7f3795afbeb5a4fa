"""The discipline benchmark's scenarios, shared by bench/discipline.py and the sim tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..discipline import Discipline
from ..leapfile import format_leapfile, parse_leapfile
from ..ntptime import NS_PER_S, NTP_UNIX_OFFSET_S
from ..sysclock import TICK_SLEW_RATE
from .world import Outage, RefclockModel, Score, ServerModel, World, run

#: 2016-12-01 00:00 UTC: a month that ended with an inserted leap second.
START_NS = 1_480_550_400 * NS_PER_S
LEAP_NS = 1_483_228_800 * NS_PER_S  # 2017-01-01 00:00:00 UTC
HOUR = 3600
#: How fast the simulated clock slews: the kernel clock driven through its tick length
#: (``KernelClock(max_slew_rate=...)``), as chronyd drives it. None: adjtime's 500 µs/s.
SLEW_RATE: float | None = TICK_SLEW_RATE


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    build: Callable[[int, int, str], Score]  # (seed, seconds, mode) -> Score
    seconds: int = 4 * HOUR


def _pps_shm(jitter: float, drift: bool) -> Callable[[int, int, str], Score]:
    def build(seed: int, seconds: int, mode: str) -> Score:
        w = World(seed=seed, start_ns=START_NS, slew_rate=SLEW_RATE)
        d = Discipline(w.clock, initial_frequency_ppm=-20.0 if drift else None)
        pps = RefclockModel("PPS", kind="pps", jitter=jitter)
        shm = RefclockModel("SHM", kind="shm", jitter=1e-3, prefer=True)
        refs = [pps, shm] if mode == "direct" else [shm, pps]
        return run(w, d, refclocks=refs, seconds=seconds, mode=mode)

    return build


def _shm(seed: int, seconds: int, mode: str) -> Score:
    w = World(seed=seed, start_ns=START_NS, slew_rate=SLEW_RATE)
    d = Discipline(w.clock)
    return run(w, d, refclocks=[RefclockModel("SHM", kind="shm", jitter=1e-3)],
               seconds=seconds, mode=mode)


def _net_client(iburst: bool) -> Callable[[int, int, str], Score]:
    def build(seed: int, seconds: int, mode: str) -> Score:
        w = World(seed=seed, start_ns=START_NS, slew_rate=SLEW_RATE)
        d = Discipline(w.clock, minpoll=4, maxpoll=4)
        return run(w, d, servers=[ServerModel("server", iburst=iburst)], seconds=seconds,
                   mode="system")

    return build


_net = _net_client(False)


def _falseticker(seed: int, seconds: int, mode: str) -> Score:
    w = World(seed=seed, start_ns=START_NS, slew_rate=SLEW_RATE)
    d = Discipline(w.clock, minpoll=4, maxpoll=4)
    servers = [ServerModel(f"s{i}", asymmetry=(i - 1.5) * 20e-6) for i in range(3)]
    servers.append(ServerModel("false", offset=0.050))
    return run(w, d, servers=servers, seconds=seconds, mode="system")


def _outage(seed: int, seconds: int, mode: str) -> Score:
    w = World(seed=seed, start_ns=START_NS, slew_rate=SLEW_RATE)
    d = Discipline(w.clock)
    gone = [Outage(HOUR, 2 * HOUR)]
    refs = [RefclockModel("SHM", kind="shm", jitter=1e-3, prefer=True, outages=gone),
            RefclockModel("PPS", kind="pps", outages=gone)]
    servers = [ServerModel(f"s{i}", poll=6) for i in range(3)]
    return run(w, d, refclocks=refs, servers=servers, seconds=seconds, mode="system")


LEAP_TABLE = parse_leapfile(
    format_leapfile(
        [(2272060800, 10), (3644697600, 36), (LEAP_NS // NS_PER_S + NTP_UNIX_OFFSET_S, 37)],
        updated=3676924800,
        expires=3707596800,
    )
)


def leap_run(seed: int, seconds: int, *, kernel: bool, before_s: int = 1200) -> Score:
    """Start ``before_s`` before the leap (clock already good) with PPS + SHM."""
    w = World(seed=seed, start_ns=LEAP_NS - before_s * NS_PER_S, offset=0.0, freq_ppm=5.0,
              leaps_ns=(LEAP_NS,), slew_rate=SLEW_RATE)
    d = Discipline(w.clock, initial_frequency_ppm=-5.0)
    refs = [RefclockModel("SHM", kind="shm", jitter=1e-3, prefer=True),
            RefclockModel("PPS", kind="pps")]
    return run(w, d, refclocks=refs, seconds=seconds, mode="system", settle_s=0,
               leap_table=LEAP_TABLE, kernel_leap=kernel)


def _leap(seed: int, seconds: int, mode: str) -> Score:
    return leap_run(seed, seconds, kernel=True, before_s=seconds // 2)


SCENARIOS = [
    Scenario("1", "SHM (1 ms) + PPS perfect edges, 10 ms & +20 PPM off, no drift file",
             _pps_shm(0.0, False)),
    Scenario("2a", "as 1 with 1 µs PPS jitter", _pps_shm(1e-6, False)),
    Scenario("2b", "as 1 with a drift file", _pps_shm(0.0, True)),
    Scenario("3", "SHM only (1 ms noise)", _shm),
    Scenario("4", "network client, one server polled every 16 s", _net),
    Scenario("4i", "as 4 with iburst (8 exchanges 2 s apart at start)", _net_client(True)),
    Scenario("5", "four network servers, one 50 ms off", _falseticker),
    Scenario("6", "PPS + SHM with a 1 h GPS outage (1 h to 2 h), three network servers", _outage),
    Scenario("7", "leap second inserted at the end of December (kernel armed)", _leap,
             seconds=2 * HOUR),
]
