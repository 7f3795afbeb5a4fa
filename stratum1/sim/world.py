"""The virtual-time world: true UTC, source models and a runner that drives the real core.

True time runs on a leap-free scale in integer ns; UTC repeats a second after each inserted
leap. Refclock models (PPS, SHM, NMEA) give per-second samples reduced per poll by the
framework's own reduction; network servers answer one exchange per poll with random delays.
The runner feeds them to the real Association/SystemProcess and Discipline (or, in "direct"
mode, a reduced refclock straight to the Discipline) and scores the clock against true UTC.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..association import STARTUP_POLL_S, STARTUP_POLLS, Association
from ..discipline import Discipline
from ..leap import LeapScheduler
from ..leapfile import LeapTable
from ..ntptime import NS_PER_S
from ..refclock.filter import reduce_offsets
from ..sample import LEAP_NONE, Measurement
from ..system import SystemProcess
from .clock import SimClock


@dataclass
class Outage:
    start_s: float
    end_s: float

    def covers(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


@dataclass
class RefclockModel:
    """A reference clock: one sample per second; ``jitter`` s gaussian on the local stamp."""

    name: str
    kind: str = "pps"  # "pps" | "shm" | "nmea"
    jitter: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)  # NMEA: sentence latency range, s
    offset: float = 0.0  # systematic error, s
    poll: int = 4
    outages: list[Outage] = field(default_factory=list)
    prefer: bool = False
    window: list[tuple[int, float]] = field(default_factory=list)

    def sample(self, world: World, t_s: float) -> None:
        if any(o.covers(t_s) for o in self.outages):
            return
        rng = world.rng
        local = world.clock.now_ns()
        err = rng.gauss(0.0, self.jitter) if self.jitter else 0.0
        if self.kind == "nmea":
            # Stamped on arrival, latency compensated by its mean (a calibrated time2).
            lo, hi = self.latency
            err += rng.uniform(lo, hi) - (lo + hi) / 2
        ref = world.utc_ns()
        self.window.append((local, (ref - local) / NS_PER_S - err + self.offset))
        del self.window[:-64]

    def measurement(self) -> tuple[Measurement, int] | None:
        """The poll's reduced measurement and the span it covers, or None (no samples)."""
        if not self.window:
            return None
        red = reduce_offsets([o for _, o in self.window])
        span = self.window[-1][0] - self.window[0][0]
        m = Measurement(
            red.offset, 0.0, max(red.jitter, 1e-6), self.window[-1][0], jitter=red.jitter
        )
        self.window.clear()
        return m, span


@dataclass
class ServerModel:
    """A network server: base delay, exponential jitter, asymmetry, and its own time error."""

    name: str
    base_delay: float = 100e-6
    jitter_mean: float = 100e-6
    asymmetry: float = 0.0  # s: added to the outbound leg, taken from the return leg
    offset: float = 0.0  # the server's own error (a falseticker is far off)
    poll: int = 4
    outages: list[Outage] = field(default_factory=list)
    #: Second of the first exchange: a client asks as soon as it starts (ntpd and chronyd do).
    first_s: int = 1
    #: ntpd's ``iburst``: the first poll is a burst of 8 exchanges 2 s apart.
    iburst: bool = False

    def exchange(self, world: World, t_s: float) -> Measurement | None:
        if any(o.covers(t_s) for o in self.outages):
            return None
        rng = world.rng
        up = self.base_delay / 2 + self.asymmetry + rng.expovariate(2 / self.jitter_mean)
        down = self.base_delay / 2 - self.asymmetry + rng.expovariate(2 / self.jitter_mean)
        proc = 10e-6
        t1 = world.clock.now_ns()
        t2 = world.utc_ns() + round((up + self.offset) * NS_PER_S)
        t3 = t2 + round(proc * NS_PER_S)
        # The local clock advances by the elapsed time (its rate error is negligible here).
        t4 = t1 + round((up + proc + down) * NS_PER_S)
        offset = ((t2 - t1) + (t3 - t4)) / 2 / NS_PER_S
        delay = ((t4 - t1) - (t3 - t2)) / NS_PER_S
        return Measurement(offset, delay, 1e-6, t4)


@dataclass
class Score:
    errors: list[float]  # s, local minus true UTC, one per simulated second
    t100: float | None  # s until |error| < 100 µs for good (a minute at least)
    t10: float | None
    rms: float  # after the settle time
    max: float
    actions: dict[str, int]
    tallies: dict[str, str]
    selected: list[str]  # system peer name each second (system mode)

    def window(self, start_s: int, end_s: int) -> tuple[float, float]:
        part = self.errors[start_s:end_s]
        if not part:
            return 0.0, 0.0
        return math.sqrt(sum(e * e for e in part) / len(part)), max(abs(e) for e in part)


def time_to(errors: list[float], bound: float, hold_s: int = 60) -> float | None:
    good = 0
    for i, e in enumerate(errors):
        good = good + 1 if abs(e) < bound else 0
        if good >= hold_s:
            return float(i - hold_s + 2)
    return None


class World:
    """True time, the simulated clock, the sources, and the leap seconds of UTC."""

    def __init__(
        self,
        *,
        seed: int,
        start_ns: int,
        offset: float = 0.010,
        freq_ppm: float = 20.0,
        wander: float = 1e-9,
        leaps_ns: tuple[int, ...] = (),
        can_adjust: bool = True,
        slew_rate: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.start_ns = start_ns
        # The simulated oscillator gets its own stream so sources don't perturb its wander.
        self.clock = SimClock(
            start_ns,
            offset=offset,
            freq_ppm=freq_ppm,
            wander=wander,
            rng=random.Random(seed * 7919 + 1),
            can_adjust=can_adjust,
            slew_rate=slew_rate,
        )
        self.leaps_ns = leaps_ns  # UTC instants (Unix ns) right after each inserted second

    def utc_ns(self) -> int:
        """True UTC as Unix ns: the continuous scale minus the leaps inserted so far."""
        t = self.clock.true_ns
        return t - NS_PER_S * sum(1 for leap in self.leaps_ns if t >= leap)


def run(
    world: World,
    discipline: Discipline,
    *,
    refclocks: list[RefclockModel] = (),  # type: ignore[assignment]
    servers: list[ServerModel] = (),  # type: ignore[assignment]
    seconds: int,
    mode: str = "system",
    settle_s: int = 1800,
    leap_table: LeapTable | None = None,
    kernel_leap: bool = True,
) -> Score:
    """Run ``seconds`` of virtual time; ``mode`` "system" (full core) or "direct"."""
    clock = world.clock
    leap = LeapScheduler(kernel=kernel_leap, table=leap_table) if leap_table else None
    system = None
    assocs: dict[str, Association] = {}
    if mode == "system":
        system = SystemProcess(precision=-20, discipline=discipline, poll=4,
                               start_ns=clock.now_ns())
        aid = 1
        for r in refclocks:
            a = Association(aid, r.name, refclock=True, stratum=0,
                            refid=b"PPS" if r.kind == "pps" else b"GPS",
                            minpoll=r.poll, maxpoll=r.poll, pps=r.kind == "pps", prefer=r.prefer)
            system.add(a)
            assocs[r.name] = a
            aid += 1
        for s in servers:
            a = Association(aid, s.name, refclock=False, minpoll=s.poll, maxpoll=s.poll,
                            address=f"127.0.0.{aid}")
            system.add(a)
            assocs[s.name] = a
            aid += 1
    next_poll = {r.name: STARTUP_POLL_S for r in refclocks}
    next_poll.update({s.name: s.first_s for s in servers})
    polls = {r.name: 0 for r in refclocks}
    bursts = {s.name: 0 for s in servers}
    actions: dict[str, int] = {}
    errors: list[float] = []
    selected: list[str] = []
    for sec in range(1, seconds + 1):
        # Score mid-second: whole seconds are where leaps and pulses happen.
        clock.advance_to(world.start_ns + sec * NS_PER_S - NS_PER_S // 2)
        errors.append((clock.now_ns() - world.utc_ns()) / NS_PER_S)
        if leap is not None and not kernel_leap:
            # The daemon holds the clock by a timer set for the leap instant on its own clock
            # (due before the next whole second of true time, give or take the clock's error).
            due = leap.update(clock.now_ns()).leap_ns
            if due is not None and 0 < due - clock.now_ns() <= NS_PER_S:
                clock.advance_to(clock.true_ns + due - clock.now_ns())
                d = leap.update(clock.now_ns())
                if d.hold_step_ns:
                    clock.step(d.hold_step_ns)
                    discipline.notify_leap(d.hold_step_ns)
        clock.advance_to(world.start_ns + sec * NS_PER_S)
        now = clock.now_ns()
        if leap is not None:
            d = leap.update(now)
            if kernel_leap:
                clock.set_leap(d.kernel)
            elif d.hold_step_ns:
                clock.step(d.hold_step_ns)
                discipline.notify_leap(d.hold_step_ns)
            if clock.leap_events and clock.leap_events[-1][0] == clock.true_ns:
                discipline.notify_leap(clock.leap_events[-1][1])
        for r in refclocks:
            r.sample(world, sec)
        results = []
        if mode == "direct":
            for r in refclocks:
                if sec % (1 << r.poll) == 0:
                    got = r.measurement()
                    if got is not None:
                        m, span = got
                        results.append(discipline.update(
                            m.offset, max(m.jitter or 0.0, 1e-9) / math.sqrt(16), now,
                            poll=r.poll, sample_ns=m.local_ns, span_ns=span))
                    break  # direct mode: the first refclock only
        else:
            assert system is not None
            fed = False
            for r in refclocks:
                a = assocs[r.name]
                if sec >= next_poll[r.name]:
                    polls[r.name] += 1
                    got = r.measurement()
                    if got is None:
                        a.poll_missed(now)
                    else:
                        a.receive(got[0], now, leap=LEAP_NONE, span_ns=got[1])
                    fed = True
                    # The daemon polls a refclock every 2 s until its filter is full.
                    step = STARTUP_POLL_S if polls[r.name] < STARTUP_POLLS else 1 << a.poll
                    next_poll[r.name] = sec + step
            for s in servers:
                a = assocs[s.name]
                if sec >= next_poll[s.name]:
                    m = s.exchange(world, sec)
                    in_burst = bursts[s.name] > 0
                    if m is None:
                        if not in_burst:
                            a.poll_missed(now)
                    else:
                        a.receive(m, now, stratum=1, refid=b"GPS", root_delay=0.0,
                                  root_dispersion=1e-5, leap=LEAP_NONE, reference_ns=now,
                                  burst=in_burst)
                    fed = True
                    if bursts[s.name] == 0 and s.iburst and a.received == 1:
                        bursts[s.name] = 7  # the rest of the start-up burst
                    if bursts[s.name] > 0:
                        bursts[s.name] -= 1
                        next_poll[s.name] = sec + 2
                    else:
                        next_poll[s.name] = sec + (1 << a.poll)
            if fed:
                system.update(now)
                if system.last_action:
                    results.append(system.last_action)
            peer = system.system_peer
            selected.append(peer.name if peer is not None else "")
        for res in results:
            act = res if isinstance(res, str) else res.action
            actions[act] = actions.get(act, 0) + 1
    late = errors[settle_s:]
    rms = math.sqrt(sum(e * e for e in late) / len(late)) if late else 0.0
    return Score(
        errors=errors,
        t100=time_to(errors, 100e-6),
        t10=time_to(errors, 10e-6),
        rms=rms,
        max=max((abs(e) for e in late), default=0.0),
        actions=actions,
        tallies={n: a.tally for n, a in assocs.items()},
        selected=selected,
    )
