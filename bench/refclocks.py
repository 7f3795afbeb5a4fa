"""Refclock pipeline figures (not a test): NMEA sentences decoded per second, and the cost per
sample of the whole NMEA path (framing, decoding, stamping, hand-over to the framework).

    python bench/refclocks.py [capture.log] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stratum1.drivers.nmea import NmeaDriver
from stratum1.drivers.nmea_decode import NmeaDecoder, NmeaFramer, capture_date_ns, read_capture
from stratum1.hw.serial import ArrivalEstimator, char_time_ns

from stratum1.refclock.testing import unit_config

DEFAULT_CAPTURE = Path("/work/shared/captures/nmea/ublox-8.log")
NS = 1_000_000_000


class _NullCtx:
    def __init__(self) -> None:
        self.loop = type("L", (), {"now_ns": staticmethod(time.monotonic_ns),
                                   "call_every": lambda *a, **k: None})()
        self.clock = type("C", (), {"now_ns": staticmethod(time.time_ns)})()
        self.address = "127.127.20.0"
        self.samples = 0

    def add_sample(self, sample, *, lock_only=False) -> None:
        self.samples += 1

    def add_pulse(self, local_ns) -> None:
        pass

    def report_fault(self, message) -> None:
        pass

    def log_timecode(self, timecode) -> None:
        pass

    def count(self, counter, n=1) -> None:
        pass


class _Port:
    def __init__(self, path, baud, loop, clock, on_data, on_error, char_ns=None) -> None:
        self.on_data = on_data

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


def bench_decoder(data: bytes, pivot: int, budget_s: float) -> tuple[int, float]:
    lines = [f.data for f in NmeaFramer().feed(data) if f.problem is None]
    done, start = 0, time.perf_counter()
    for _ in range(100_000):  # bounded
        dec = NmeaDecoder(0, pivot)
        for line in lines:
            dec.feed_line(line, None)
        done += len(lines)
        if time.perf_counter() - start > budget_s:
            break
    return done, time.perf_counter() - start


def bench_pipeline(data: bytes, pivot: int, budget_s: float) -> tuple[int, int, float]:
    """Feed the capture in 64-byte reads (a USB adapter's packet) through the driver."""
    chunks = [data[i : i + 64] for i in range(0, len(data), 64)]
    samples = nbytes = 0
    start = time.perf_counter()
    for _ in range(10_000):  # bounded
        ctx = _NullCtx()
        drv = NmeaDriver(unit_config(type=20, baud=9600), ctx, port_factory=_Port, pivot_ns=pivot)
        drv.open()
        est = ArrivalEstimator(char_time_ns(9600))
        port = drv.port
        for c in chunks:
            port.on_data(c, est.on_read(time.time_ns(), len(c)))
        samples += ctx.samples
        nbytes += len(data)
        if time.perf_counter() - start > budget_s:
            break
    return samples, nbytes, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    raw = args.capture.read_bytes()
    data = read_capture(raw)
    pivot = (capture_date_ns(raw) or 946_684_800 * NS) - 365 * 86_400 * NS
    n, t = bench_decoder(data, pivot, args.seconds)
    print(f"capture: {args.capture.name} ({len(data)} bytes)")
    print(f"NMEA decoder:  {n / t:12,.0f} sentences/s   {t / n * 1e6:8.2f} us/sentence")
    samples, nbytes, t = bench_pipeline(data, pivot, args.seconds)
    print(f"NMEA pipeline: {samples / t:12,.0f} samples/s     {t / samples * 1e6:8.2f} us/sample"
          f"  ({nbytes / t / 1e6:.2f} MB/s of serial input, all sentences of each burst included)")
    print("a 1 Hz receiver needs 1 sample/s: the budget used is "
          f"{t / samples * 100:.4f} % of one core")


if __name__ == "__main__":
    main()
