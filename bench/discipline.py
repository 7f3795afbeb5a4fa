"""Clock discipline benchmark: the simulator's scenarios over several seeds, figures printed.

Run: .venv/bin/python bench/discipline.py [--seeds N] [--hours H] [--mode system|direct]
Prints per scenario: time to |error| < 100 µs and < 10 µs (held for a minute), and the RMS and
maximum time error after the first 30 minutes, as median over seeds (and worst seed).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

from stratum1.sim.scenarios import HOUR, SCENARIOS


def fmt_t(v: list[float | None]) -> str:
    if any(x is None for x in v):
        reached = [x for x in v if x is not None]
        return f"never({len(v) - len(reached)}/{len(v)})" if not reached else (
            f"{statistics.median(reached):.0f}s*")
    return f"{statistics.median(v):.0f}s"  # type: ignore[arg-type]


def ideal_shm_rms(seed: int, hours: float, reduce: str = "mean") -> float:
    """Scenario 3's bound: a Kalman filter told the true noise (1 ms per sample, 1 ppb/√s
    random-walk wander), fed each 16 s poll's mean (or ``reduce="ntpd"``: ntpd's trimmed
    mean), scored every second after 30 min as the loop is. Nothing acts on a clock."""

    rng = random.Random(seed)
    jitter, wander, poll = 1e-3, 1e-9, 16
    q, r = wander * wander, jitter * jitter / poll
    x, y = 0.010, 20e-6  # the oscillator: phase and frequency error
    kx: float | None = None
    ky, kt, pxx, pxy, pyy = 0.0, 0.0, 0.0, 0.0, (200e-6) ** 2
    window: list[float] = []
    sq, n = 0.0, 0
    for sec in range(1, int(hours * 3600) + 1):
        dy = rng.gauss(0.0, wander)
        x, y = x + y + dy / 2, y + dy
        if kx is not None and sec > 1800:
            sq += (x - kx - ky * (sec - kt)) ** 2
            n += 1
        window.append(x + rng.gauss(0.0, jitter))
        if sec % poll:
            continue
        if reduce == "mean":
            z = math.fsum(window) / len(window)
        else:
            z = _ntpd_trimmed_mean(window)
        tz = sec - (len(window) - 1) / 2
        window = []
        if kx is None:
            kx, kt, pxx = z, tz, r
            continue
        dt = tz - kt
        xp = kx + ky * dt
        pxx, pxy, pyy = (pxx + 2 * dt * pxy + dt * dt * pyy + q * dt**3 / 3,
                         pxy + dt * pyy + q * dt * dt / 2, pyy + q * dt)
        s = pxx + r
        gx, gy, innov = pxx / s, pxy / s, z - xp
        kx, ky, kt = xp + gx * innov, ky + gy * innov, tz
        pxx, pxy, pyy = (1 - gx) * pxx, (1 - gx) * pxy, pyy - gy * pxy
    return math.sqrt(sq / n)


def _ntpd_trimmed_mean(offsets: list[float]) -> float:
    """ntpd's refclock reduction: drop the end farther from the middle until 60 % remain."""
    off = sorted(offsets)
    keep = len(off) - (len(off) * 4) // 10
    lo, hi = 0, len(off)
    while hi - lo > keep:
        mid = off[(lo + hi) // 2]
        if off[hi - 1] - mid < mid - off[lo]:
            lo += 1
        else:
            hi -= 1
    return math.fsum(off[lo:hi]) / (hi - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--mode", choices=["system", "direct"], default="system")
    ap.add_argument("--only", default="", help="comma-separated scenario keys")
    ap.add_argument("--bound", action="store_true",
                    help="print scenario 3's bound (an ideal Kalman filter) and exit")
    args = ap.parse_args(argv)
    if args.bound:
        for reduce in ("mean", "ntpd"):
            rms = [ideal_shm_rms(seed, args.hours, reduce) for seed in range(1, args.seeds + 1)]
            print(f"scenario 3 bound, per-poll {reduce:5}: median RMS "
                  f"{statistics.median(rms) * 1e6:.1f}µs over {len(rms)} seeds")
        return 0
    only = {k for k in args.only.split(",") if k}
    print(f"mode={args.mode} seeds={args.seeds}")
    print(f"{'scen':5} {'t<100us':>10} {'t<10us':>10} {'RMS':>10} {'RMS worst':>10} "
          f"{'max':>10}  notes")
    for sc in SCENARIOS:
        if only and sc.key not in only:
            continue
        seconds = sc.seconds if sc.key == "7" else int(args.hours * HOUR)
        t = time.monotonic()
        scores = [sc.build(seed, seconds, args.mode) for seed in range(1, args.seeds + 1)]
        rms = [s.rms for s in scores]
        mx = max(s.max for s in scores)
        notes = ""
        if sc.key == "5":
            notes = "tallies " + " ".join(f"{k}={v}" for k, v in scores[0].tallies.items())
            chosen = {n for s in scores for n in s.selected}
            notes += f"; ever selected: {sorted(n for n in chosen if n)}"
        if sc.key == "6":
            hold = [s.window(HOUR, 2 * HOUR) for s in scores]
            back = [s.window(2 * HOUR + 600, seconds) for s in scores]
            during = {n for s in scores for n in s.selected[HOUR + 300: 2 * HOUR]}
            notes = (f"outage RMS {statistics.median(h[0] for h in hold) * 1e6:.1f}µs "
                     f"max {max(h[1] for h in hold) * 1e6:.1f}µs; selected during: "
                     f"{sorted(during)}; after return RMS "
                     f"{statistics.median(b[0] for b in back) * 1e6:.2f}µs")
        if sc.key == "7":
            notes = f"steps {scores[0].actions.get('step', 0)}, max |err| {mx * 1e6:.2f}µs"
        print(f"{sc.key:5} {fmt_t([s.t100 for s in scores]):>10} "
              f"{fmt_t([s.t10 for s in scores]):>10} {statistics.median(rms) * 1e6:>8.3f}µs "
              f"{max(rms) * 1e6:>8.3f}µs {mx * 1e6:>8.2f}µs  {notes} "
              f"[{time.monotonic() - t:.1f}s]  {sc.title}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
