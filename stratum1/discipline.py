"""The clock discipline: turns system offsets into steps, slews and frequency corrections.

ntpd's user-facing rules (step 128 ms, stepout 900 s, panic 1000 s, ``-g``, ±500 PPM, poll
adaptation, huff-n'-puff) around a regression loop in the manner of chrony: offset and frequency
are estimated by weighted least squares over the recent samples and corrected directly.
Sans-I/O: offsets and "now" come in as arguments; the only output is calls on the Clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .clock import Clock
from .ntptime import NS_PER_S

IGNORE = "ignore"
SLEW = "slew"
STEP = "step"
PANIC = "panic"
#: The kernel's PPS loop steers the clock (``stratum1.kerneldisc``): the offset was only measured.
KERNEL = "kernel"

#: The kernel's frequency range (ntpd and Linux both clamp to ±500 PPM).
MAX_FREQ_PPM = 500.0
#: Rate at which ``Clock.slew`` amortises an offset (Linux ``adjtime``: 500 µs per second).
DEFAULT_SLEW_RATE = 500e-6
#: Poll adaptation as ntpd's: gate on offset vs jitter, counter limit (RFC 5905 PGATE, LIMIT).
PGATE = 4.0
POLL_LIMIT = 30
#: Regression window bounds: at least 3 samples kept by the runs test, at most 64 samples.
MIN_REGRESSION = 3
MAX_SAMPLES = 64
#: huff-n'-puff keeps one minimum delay per 900 s slot (ntpd's HUFFPUFF).
HUFFPUFF_SLOT_S = 900.0
#: With a drift file, the prior on the frequency: how far it may be from the truth (PPM).
DRIFT_PRIOR_SIGMA_PPM = 1.0
#: Without one: a weak prior keeps a two-point fit from wild values early on.
NO_PRIOR_SIGMA_PPM = 200.0
#: Random-walk frequency noises (1/s) of the Kalman bank, a decade apart, relative to the
#: sample variance given: wide, because the jitter handed in may be far off (or 0, floored
#: at 1 ns) and only the ratio of q to the sample variance shapes the estimates.
Q_GRID = tuple(10.0**k for k in range(-33, -9))
#: Forgetting factor of the innovation likelihoods (about 1000 updates of memory: the
#: oscillator's wander is a lasting property, and a short memory lets the noise of the
#: innovations pick extreme models; the scale below is learnt faster).
SCORE_MEMORY = 0.999
#: Forgetting factor of each filter's learnt innovation scale.
SCALE_MEMORY = 0.98
#: Share of a slew inside an averaging window taken as that window's extra error.
RAMP_DISTRUST = 0.3
#: Samples are never trusted to be better than this (s): keeps the weights finite.
MIN_SAMPLE_ERROR = 1e-9


@dataclass(frozen=True, slots=True)
class DisciplineResult:
    """What the loop decided for one update."""

    action: str  # "ignore" | "slew" | "step" | "panic"
    offset: float  # s: the offset corrected (slew/step), or the offset seen (ignore/panic)
    frequency_ppm: float  # frequency correction now in effect (or that would be, undisciplined)
    poll: int  # log2 s: the poll interval the loop suggests
    jitter: float = 0.0  # s: RMS residual of the regression (loop jitter)
    samples: int = 0  # samples in the regression window


@dataclass(slots=True)
class _Point:
    t_ns: int  # local time the offset refers to
    raw: float  # offset plus all corrections applied so far: the free-running oscillator's error
    sigma: float  # s, expected error of this sample


class _Correction:
    """Our model of how much we have moved the clock: steps, slews and frequency, integrated.

    Knowing it exactly (the Clock's slew and frequency semantics are defined) lets the loop see
    the free-running oscillator behind the corrections and regress on that. A short history of
    the commands lets it evaluate the correction at a sample's own (earlier) time.
    """

    def __init__(self, freq_ppm: float, slew_rate: float) -> None:
        self.slew_rate = slew_rate
        self.total = 0.0  # s, at at_ns
        self.at_ns: int | None = None
        self.freq_ppm = freq_ppm
        self.slew_left = 0.0  # s still to be slewed at at_ns
        self._history: deque[tuple[int, float, float, float]] = deque(maxlen=MAX_SAMPLES + 8)

    @staticmethod
    def _integrate(state: tuple[int, float, float, float], rate: float, t_ns: int) -> float:
        at_ns, total, freq_ppm, slew_left = state
        dt = (t_ns - at_ns) / NS_PER_S
        if dt <= 0:
            return total
        done = min(abs(slew_left), rate * dt)
        return total + freq_ppm * 1e-6 * dt + math.copysign(done, slew_left)

    def advance(self, t_ns: int) -> float:
        """Move the model to ``t_ns`` (later than the last call) and return the total."""
        if self.at_ns is None:
            self.at_ns = t_ns
            return self.total
        dt = (t_ns - self.at_ns) / NS_PER_S
        if dt > 0:
            done = min(abs(self.slew_left), self.slew_rate * dt)
            done = math.copysign(done, self.slew_left)
            self.total += self.freq_ppm * 1e-6 * dt + done
            self.slew_left -= done
            self.at_ns = t_ns
        return self.total

    def commit(self) -> None:
        """Record the state after a command, for ``at`` to look back on."""
        if self.at_ns is not None:
            self._history.append((self.at_ns, self.total, self.freq_ppm, self.slew_left))

    def at(self, t_ns: int) -> float:
        """The correction total at ``t_ns``, which may lie before the last advance."""
        if self.at_ns is None or t_ns >= self.at_ns:
            return (
                self.total
                if self.at_ns is None
                else self._integrate(
                    (self.at_ns, self.total, self.freq_ppm, self.slew_left), self.slew_rate, t_ns
                )
            )
        for state in reversed(self._history):
            if state[0] <= t_ns:
                return self._integrate(state, self.slew_rate, t_ns)
        return self._history[0][1] if self._history else self.total

    def mean(self, t0_ns: int, t1_ns: int, points: int = 32) -> float:
        """The average correction over [t0, t1]: what a window of averaged samples saw."""
        if t1_ns <= t0_ns:
            return self.at(t1_ns)
        step = (t1_ns - t0_ns) / (points - 1)
        return math.fsum(self.at(t0_ns + round(i * step)) for i in range(points)) / points

    def forget(self) -> None:
        self._history.clear()

    def shift(self, step_ns: int) -> None:
        """Move the model's time axis (the clock was stepped for a leap second)."""
        if self.at_ns is not None:
            self.at_ns += step_ns
        self._history = deque(
            ((t + step_ns, a, b, c) for t, a, b, c in self._history), maxlen=self._history.maxlen
        )


@dataclass(frozen=True, slots=True)
class Fit:
    """A weighted straight line through the raw offsets: raw(t) = offset + slope * (t - t0)."""

    t0_ns: int
    offset: float  # s at t0
    slope: float  # s/s
    slope_sigma: float  # s/s, standard error of the slope
    rms: float  # s, weighted RMS residual
    n: int

    def predict(self, t_ns: int) -> float:
        return self.offset + self.slope * ((t_ns - self.t0_ns) / NS_PER_S)


def fit_line(points: list[_Point], t0_ns: int, prior_slope: float, prior_sigma: float) -> Fit:
    """Weighted least squares with a Gaussian prior on the slope (a drift file, or a weak one)."""
    wp = 1.0 / (prior_sigma * prior_sigma)
    sw = sx = sy = sxx = sxy = 0.0
    for p in points:
        w = 1.0 / (p.sigma * p.sigma)
        x = (p.t_ns - t0_ns) / NS_PER_S
        sw += w
        sx += w * x
        sy += w * p.raw
        sxx += w * x * x
        sxy += w * x * p.raw
    # Normal equations of sum w (y - a - b x)^2 + wp (b - prior)^2.
    det = sw * (sxx + wp) - sx * sx
    a = (sy * (sxx + wp) - sx * (sxy + wp * prior_slope)) / det
    b = (sw * (sxy + wp * prior_slope) - sx * sy) / det
    ss = 0.0
    for p in points:
        r = p.raw - a - b * ((p.t_ns - t0_ns) / NS_PER_S)
        ss += r * r / (p.sigma * p.sigma)
    n = len(points)
    scale = ss / (n - 2) if n > 2 else 1.0
    slope_sigma = math.sqrt(max(scale, 1.0) * sw / det)
    rms = math.sqrt(sum((p.raw - a - b * ((p.t_ns - t0_ns) / NS_PER_S)) ** 2 for p in points) / n)
    return Fit(t0_ns, a, b, slope_sigma, rms, n)


def runs_ok(residuals: list[float]) -> bool:
    """Wald-Wolfowitz runs test: False when residual signs cluster (the line no longer fits)."""
    pos = sum(1 for r in residuals if r > 0)
    neg = len(residuals) - pos
    if pos == 0 or neg == 0:
        return len(residuals) < MIN_REGRESSION + 1
    n = pos + neg
    runs = 1 + sum(1 for a, b in zip(residuals, residuals[1:], strict=False) if (a > 0) != (b > 0))
    mean = 2.0 * pos * neg / n + 1.0
    var = (mean - 1.0) * (mean - 2.0) / (n - 1)
    return runs >= mean - 2.0 * math.sqrt(max(var, 0.0)) - 0.5


class _Regression:
    """chrony's estimator: weighted line through the recent raw offsets, window cut by runs."""

    def __init__(self, prior_ppm: float, prior_sigma_ppm: float) -> None:
        self.points: deque[_Point] = deque(maxlen=MAX_SAMPLES)
        self.prior = (prior_ppm * 1e-6, prior_sigma_ppm * 1e-6)
        self.fit: Fit | None = None

    def add(self, p: _Point) -> None:
        self.points.append(p)
        points = list(self.points)
        t0 = p.t_ns
        n = len(points)
        while True:
            window = points[len(points) - n :]
            fit = fit_line(window, t0, *self.prior)
            if n <= MIN_REGRESSION:
                break
            if runs_ok([q.raw - fit.predict(q.t_ns) for q in window]):
                break
            n = max(MIN_REGRESSION, (n * 3) // 4)
        # Older samples the line no longer fits are gone for good: the oscillator moved on.
        while len(self.points) > max(n, MIN_REGRESSION):
            self.points.popleft()
        self.fit = fit

    def predict(self, t_ns: int) -> tuple[float, float]:
        assert self.fit is not None
        return self.fit.predict(t_ns), self.fit.slope

    @property
    def slope_sigma(self) -> float:
        return self.fit.slope_sigma if self.fit else self.prior[1]

    @property
    def rms(self) -> float:
        return self.fit.rms if self.fit and self.fit.n > 2 else 0.0

    @property
    def n(self) -> int:
        return len(self.points)


class _Kalman:
    """Phase and frequency of the free-running oscillator, tracked by a two-state Kalman filter.

    ``q`` is the random-walk frequency noise assumed (1/s); ``score`` the recent log-likelihood
    of the innovations, by which _KalmanBank picks the model that fits.
    """

    def __init__(
        self, prior_ppm: float, prior_sigma_ppm: float, q: float = 1e-18, r_scale: float = 1.0
    ) -> None:
        self.r_scale = r_scale
        self.t_ns: int | None = None
        self.x = 0.0
        self.y = prior_ppm * 1e-6
        self.pxx = 0.0
        self.pxy = 0.0
        self.pyy = (prior_sigma_ppm * 1e-6) ** 2
        self.q = q
        self.score = 0.0
        self.scale = 1.0
        self.var_innov = 0.0
        self.n = 0

    def _propagate(self, dt: float) -> tuple[float, float, float, float, float]:
        q = self.q
        x = self.x + self.y * dt
        pxx = self.pxx + 2 * dt * self.pxy + dt * dt * self.pyy + q * dt**3 / 3
        pxy = self.pxy + dt * self.pyy + q * dt * dt / 2
        pyy = self.pyy + q * dt
        return x, self.y, pxx, pxy, pyy

    def add(self, p: _Point) -> None:
        r = p.sigma * p.sigma * self.r_scale
        if self.t_ns is None:
            self.t_ns, self.x, self.pxx, self.pxy = p.t_ns, p.raw, r, 0.0
            self.n = 1
            return
        dt = max(0.0, (p.t_ns - self.t_ns) / NS_PER_S)
        x, y, pxx, pxy, pyy = self._propagate(dt)
        innov = p.raw - x
        s = pxx + r
        kx, ky = pxx / s, pxy / s
        self.x, self.y = x + kx * innov, y + ky * innov
        self.pxx, self.pxy, self.pyy = (1 - kx) * pxx, (1 - kx) * pxy, pyy - ky * pxy
        self.t_ns = max(self.t_ns, p.t_ns)
        self.n += 1
        if self.n > 2:
            self.var_innov += (innov * innov - self.var_innov) / 8
            # The filter's estimates depend on q/R only; the absolute level of R (the sources'
            # jitter is often far off, or 0) is learnt as a scale on S. The log-likelihood of
            # the innovation under the scaled model, with forgetting, ranks the filters.
            z2 = innov * innov / s
            self.scale += (z2 - self.scale) * (1 - SCALE_MEMORY)
            c = max(self.scale, 1e-12)
            self.score = SCORE_MEMORY * self.score - 0.5 * (math.log(c * s) + z2 / c)

    def predict(self, t_ns: int) -> tuple[float, float]:
        assert self.t_ns is not None
        return self.x + self.y * ((t_ns - self.t_ns) / NS_PER_S), self.y

    @property
    def slope_sigma(self) -> float:
        return math.sqrt(max(self.pyy, 0.0))

    @property
    def rms(self) -> float:
        return math.sqrt(self.var_innov)


class _KalmanBank:
    """Kalman filters for a range of oscillator wanders; the likeliest one recently is used.

    This is the loop's adaptive time constant: long when samples are noisy and the oscillator
    quiet, short when the oscillator wanders more than the samples are noisy. (A single filter
    tuning its own q from its innovations random-walks when the samples are noisy: the
    innovations then say almost nothing about q.)
    """

    def __init__(self, prior_ppm: float, prior_sigma_ppm: float) -> None:
        self.filters = [_Kalman(prior_ppm, prior_sigma_ppm, q) for q in Q_GRID]
        self.best = self.filters[len(self.filters) // 2]

    def add(self, p: _Point) -> None:
        for f in self.filters:
            f.add(p)
        self.best = max(self.filters, key=lambda f: f.score)

    def predict(self, t_ns: int) -> tuple[float, float]:
        # Blend by posterior weight: hopping between filters would make small time jumps.
        top = self.best.score
        weights = [math.exp(max(f.score - top, -50.0)) for f in self.filters]
        total = math.fsum(weights)
        x = y = 0.0
        for w, f in zip(weights, self.filters, strict=True):
            fx, fy = f.predict(t_ns)
            x += w * fx
            y += w * fy
        return x / total, y / total

    def shift(self, step_ns: int) -> None:
        for f in self.filters:
            if f.t_ns is not None:
                f.t_ns += step_ns

    @property
    def slope_sigma(self) -> float:
        return self.best.slope_sigma

    @property
    def rms(self) -> float:
        return self.best.rms

    @property
    def n(self) -> int:
        return self.best.n

    @property
    def q(self) -> float:
        return self.best.q


class Discipline:
    """The system clock discipline (one per daemon)."""

    def __init__(
        self,
        clock: Clock,
        *,
        step_threshold: float = 0.128,
        stepout: float = 900.0,
        panic: float = 1000.0,
        allow_first_big_step: bool = False,
        initial_frequency_ppm: float | None = None,
        minpoll: int = 4,
        maxpoll: int = 10,
        huffpuff: float = 0.0,
        max_frequency_ppm: float = MAX_FREQ_PPM,
        estimator: str = "kalman",
    ) -> None:
        if step_threshold < 0 or stepout < 0 or panic < 0 or huffpuff < 0:
            raise ValueError("discipline thresholds must not be negative")
        if estimator not in ("kalman", "regression"):
            raise ValueError(f"unknown estimator {estimator!r}")
        self.estimator = estimator
        if minpoll > maxpoll:
            raise ValueError(f"minpoll {minpoll} is above maxpoll {maxpoll}")
        self._clock = clock
        self.step_threshold = step_threshold
        self.stepout = stepout
        self.panic = panic
        self.allow_first_big_step = allow_first_big_step
        self.minpoll = minpoll
        self.maxpoll = maxpoll
        self.max_frequency_ppm = max_frequency_ppm
        self._adjust = bool(clock.can_adjust)
        slew_rate = float(getattr(clock, "slew_rate", DEFAULT_SLEW_RATE))
        start_freq = clock.frequency() if self._adjust else 0.0
        if initial_frequency_ppm is not None:
            initial_frequency_ppm = self._clamp(initial_frequency_ppm)
            if self._adjust:
                clock.set_frequency(initial_frequency_ppm)
                start_freq = initial_frequency_ppm
            self._prior = (initial_frequency_ppm, DRIFT_PRIOR_SIGMA_PPM)
        else:
            self._prior = (start_freq, NO_PRIOR_SIGMA_PPM)
        self._freq_ppm = self._prior[0]
        self._freq_sigma_ppm = self._prior[1]
        self._corr = _Correction(start_freq if self._adjust else 0.0, slew_rate)
        self._est = self._new_estimator()
        self._set = False
        self._spike_since: int | None = None
        self._poll = minpoll
        self._jiggle = 0
        self._jitter = 0.0
        self._wander = 0.0
        self._offset_jitter = 0.0
        self._last_slew_offset = 0.0
        self._huffpuff_slots = max(1, int(math.ceil(huffpuff / HUFFPUFF_SLOT_S))) if huffpuff else 0
        self._huff: deque[float] = deque(maxlen=self._huffpuff_slots or 1)
        self._huff_slot_start: int | None = None
        self.last_offset = 0.0
        self.updates = 0
        self.steps = 0

    # --- public read-outs -------------------------------------------------------------------

    def frequency_ppm(self) -> float:
        """The frequency correction the loop has settled on (PPM, positive: speed up)."""
        return self._freq_ppm

    @property
    def frequency_sigma_ppm(self) -> float:
        """Standard error of the frequency estimate (PPM): small means worth writing to drift."""
        return self._freq_sigma_ppm

    @property
    def clock_set(self) -> bool:
        """True once the loop has stepped or slewed the clock (``-q`` exits then)."""
        return self._set

    @property
    def poll(self) -> int:
        return self._poll

    @property
    def jitter(self) -> float:
        """RMS residual of the regression (s): loopstats' clock jitter."""
        return self._jitter

    @property
    def wander(self) -> float:
        """RMS of frequency changes between updates (PPM): loopstats' clock wander."""
        return self._wander

    @property
    def spike_pending(self) -> bool:
        return self._spike_since is not None

    # --- the loop ---------------------------------------------------------------------------

    def update(
        self,
        offset: float,
        jitter: float,
        now_ns: int,
        *,
        poll: int,
        sample_ns: int | None = None,
        span_ns: int = 0,
        delay: float | None = None,
    ) -> DisciplineResult:
        """Take one combined system offset (reference minus local, s) and act on the clock.

        ``sample_ns`` is the local time of the (last) sample behind the offset when it is older
        than ``now_ns``; ``span_ns`` how long before it the samples averaged into the offset
        began (a refclock's poll window; 0 for one network exchange). ``delay`` is the system
        peer's round-trip delay (huff-n'-puff only).
        """
        if not math.isfinite(offset) or not math.isfinite(jitter):
            raise ValueError("offset and jitter must be finite")
        self.updates += 1
        t_ns = now_ns if sample_ns is None else min(sample_ns, now_ns)
        offset = self._huffpuff(offset, delay, now_ns)
        self.last_offset = offset
        mag = abs(offset)
        if self.panic > 0 and mag > self.panic:
            if not self._set and self.allow_first_big_step:
                return self._step(offset, now_ns)
            return self._result(PANIC, offset)
        if self.step_threshold > 0 and mag > self.step_threshold:
            if not self._set:
                return self._step(offset, now_ns)
            if self._spike_since is None:
                self._spike_since = now_ns
                return self._result(IGNORE, offset)
            if (now_ns - self._spike_since) / NS_PER_S < self.stepout:
                return self._result(IGNORE, offset)
            return self._step(offset, now_ns)
        self._spike_since = None
        return self._slew(offset, jitter, t_ns, max(0, span_ns), now_ns, poll)

    def add_history(
        self, offset: float, jitter: float, sample_ns: int, *, span_ns: int = 0
    ) -> bool:
        """Add an older sample to the estimate without acting on the clock (the system peer's
        samples from before its first selection). Returns False when it was not used: not
        finite, beyond the step threshold (a step will reset the history anyway).

        Call it before the ``update`` with the newest sample, oldest sample first.
        """
        if not math.isfinite(offset) or not math.isfinite(jitter):
            return False
        if self.step_threshold > 0 and abs(offset) > self.step_threshold:
            return False
        sigma = max(jitter, MIN_SAMPLE_ERROR)
        span_ns = max(0, span_ns)
        if self._corr.at_ns is None:
            # Start the correction model here: the frequency set at start has acted since.
            self._corr.advance(sample_ns - span_ns)
            self._corr.commit()
        if span_ns:
            raw = offset + self._corr.mean(sample_ns - span_ns, sample_ns)
            t_ns = sample_ns - span_ns // 2
        else:
            raw = offset + self._corr.at(sample_ns)
            t_ns = sample_ns
        self._est.add(_Point(t_ns, raw, sigma))
        return True

    def correction_at(self, local_ns: int) -> float:
        """Total correction (s) the loop had applied by ``local_ns`` (steps, slews, frequency).

        A refclock unit can add it to each sample's offset when stored and subtract the value
        at the reduction time, so its poll window is not smeared by a slew in progress
        (chrony's refclocks do this); differences between two times are what matter.
        """
        return self._corr.at(local_ns)

    def offset_change(self, since_ns: int, now_ns: int) -> float:
        """How far (s) an offset measured at ``since_ns`` has moved by ``now_ns`` by the loop's
        own account: the corrections applied between the two, less the oscillator's drift at
        the frequency the loop estimates (which those corrections mostly cancel).

        A source's offset measured at ``since_ns`` minus this is what it would show now.
        """
        if now_ns <= since_ns:
            return 0.0
        if self._corr.at_ns is None:
            # Nothing applied yet but the frequency set at start, which has acted all along.
            moved = self._corr.freq_ppm * 1e-6 * (now_ns - since_ns) / NS_PER_S
        else:
            moved = self._corr.at(now_ns) - self._corr.at(since_ns)
        return moved - self._freq_ppm * 1e-6 * (now_ns - since_ns) / NS_PER_S

    def notify_leap(self, step_ns: int) -> None:
        """The clock was stepped by a leap second (kernel or hold): shift our time axis with it.

        Reference time stepped too, so offsets stay continuous; only stored times move.
        """
        if isinstance(self._est, _Regression):
            for p in self._est.points:
                p.t_ns += step_ns
        else:
            self._est.shift(step_ns)
        self._corr.shift(step_ns)
        if self._spike_since is not None:
            self._spike_since += step_ns

    def reset(self) -> None:
        """Forget the sample history (keeps the frequency as a prior), e.g. after a source change."""
        self._prior = (self._freq_ppm, max(self._freq_sigma_ppm, 0.01))
        self._est = self._new_estimator()

    def follow_external(self, now_ns: int, frequency_ppm: float) -> None:
        """Another loop (the kernel's hardpps) steers the clock: no slew of ours is in progress,
        the frequency is what it set, and offsets measured earlier stay where they were
        (``offset_change`` is then about 0: that loop holds the phase)."""
        self._corr.advance(now_ns)
        self._corr.slew_left = 0.0
        self._corr.freq_ppm = frequency_ppm
        self._corr.commit()
        self._freq_ppm = self._clamp(frequency_ppm)

    def take_over(self, now_ns: int, frequency_ppm: float, sigma_ppm: float = 0.1) -> None:
        """Resume this loop after another one steered the clock: start from its frequency
        (applied at once, which also turns the kernel PLL off) with a fresh sample history."""
        self.follow_external(now_ns, frequency_ppm)
        if self._adjust:
            self._clock.set_frequency(self._freq_ppm)
        self._freq_sigma_ppm = max(sigma_ppm, 0.001)
        self._spike_since = None
        self.reset()

    def _new_estimator(self) -> _KalmanBank | _Regression:
        if self.estimator == "kalman":
            return _KalmanBank(*self._prior)
        return _Regression(*self._prior)

    # --- internals --------------------------------------------------------------------------

    def _clamp(self, ppm: float) -> float:
        return max(-self.max_frequency_ppm, min(self.max_frequency_ppm, ppm))

    def _result(self, action: str, offset: float) -> DisciplineResult:
        return DisciplineResult(
            action, offset, self._freq_ppm, self._poll, self._jitter, self._est.n
        )

    def _step(self, offset: float, now_ns: int) -> DisciplineResult:
        self._corr.advance(now_ns)
        if self._adjust:
            self._clock.step(round(offset * NS_PER_S))
            self._clock.slew(0.0)  # a step cancels any slew in progress
            self._corr.total += offset
            self._corr.slew_left = 0.0
            # The clock's own time jumped: keep the model on the clock's time axis.
            self._corr.at_ns = now_ns + round(offset * NS_PER_S)
            self._corr.forget()
            self._corr.commit()
        self._set = True
        self._spike_since = None
        self.steps += 1
        self.reset()
        self._poll = self.minpoll
        self._jiggle = 0
        return self._result(STEP, offset)

    def _slew(
        self, offset: float, jitter: float, t_ns: int, span_ns: int, now_ns: int, poll: int
    ) -> DisciplineResult:
        sigma = max(jitter, MIN_SAMPLE_ERROR)
        self._corr.advance(now_ns)
        if span_ns:
            # An average over a window saw the average correction, and stands for its middle.
            raw = offset + self._corr.mean(t_ns - span_ns, t_ns)
            # A slew inside the window makes the samples a ramp, or a jump whose far side the
            # outlier rejection may drop: the average is uneven, so trust such a window less.
            moved = self._corr.at(t_ns) - self._corr.at(t_ns - span_ns)
            slewed = moved - self._corr.freq_ppm * 1e-6 * span_ns / NS_PER_S
            sigma = math.hypot(sigma, RAMP_DISTRUST * slewed)
            t_ns -= span_ns // 2
        else:
            raw = offset + self._corr.at(t_ns)
        self._est.add(_Point(t_ns, raw, sigma))
        pred, slope = self._est.predict(now_ns)
        correction = pred - self._corr.total
        new_freq = self._clamp(slope * 1e6)
        if self.updates > 1:
            change = new_freq - self._freq_ppm
            self._wander = math.sqrt((self._wander**2 * 7 + change * change) / 8)
        self._freq_ppm = new_freq
        self._freq_sigma_ppm = self._est.slope_sigma * 1e6
        self._jitter = self._est.rms if self._est.n > 2 else sigma
        if self._adjust:
            self._clock.set_frequency(new_freq)
            self._clock.slew(correction)
            self._corr.freq_ppm = new_freq
            self._corr.slew_left = correction
            self._corr.commit()
        self._set = True
        # ntpd's clock jitter: RMS of successive offset differences, the gate of poll adaptation.
        diff = offset - self._last_slew_offset
        self._offset_jitter = math.sqrt(
            self._offset_jitter**2 + (diff * diff - self._offset_jitter**2) / 4
        )
        self._last_slew_offset = offset
        self._adapt_poll(offset, max(sigma, self._offset_jitter), poll)
        return DisciplineResult(SLEW, correction, new_freq, self._poll, self._jitter, self._est.n)

    def _adapt_poll(self, offset: float, jitter: float, poll: int) -> None:
        if abs(offset) < PGATE * jitter:
            self._jiggle += self._poll
            if self._jiggle > POLL_LIMIT:
                self._jiggle = POLL_LIMIT
                if self._poll < self.maxpoll:
                    self._jiggle = 0
                    self._poll += 1
        else:
            self._jiggle -= 2 * self._poll
            if self._jiggle < -POLL_LIMIT:
                self._jiggle = -POLL_LIMIT
                if self._poll > self.minpoll:
                    self._jiggle = 0
                    self._poll -= 1

    def _huffpuff(self, offset: float, delay: float | None, now_ns: int) -> float:
        """ntpd's huff-n'-puff: remove the excess over the minimum recent delay, signed by offset."""
        if not self._huffpuff_slots or delay is None or not math.isfinite(delay) or delay < 0:
            return offset
        if self._huff_slot_start is None or (
            (now_ns - self._huff_slot_start) / NS_PER_S >= HUFFPUFF_SLOT_S
        ):
            self._huff.append(delay)
            self._huff_slot_start = now_ns
        elif delay < self._huff[-1]:
            self._huff[-1] = delay
        excess = (delay - min(self._huff)) / 2.0
        if excess <= 0:
            return offset
        return math.copysign(max(abs(offset) - excess, 0.0), offset)
