"""Tests for stratum1/eventloop.py: timers, readers, signals, failing handlers."""

import os
import signal
import time

from stratum1.eventloop import EventLoop


class FakeTime:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def test_timers_fire_in_order_and_cancel():
    loop = EventLoop()
    fired = []
    loop.call_later(0.02, lambda: fired.append("b"))
    loop.call_later(0.01, lambda: fired.append("a"))
    t = loop.call_later(0.015, lambda: fired.append("cancelled"))
    t.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run(until_ns=time.monotonic_ns() + 2_000_000_000)
    assert fired == ["a", "b"]
    loop.close()


def test_call_every_does_not_drift_and_skips_when_behind():
    clock = FakeTime()
    loop = EventLoop(monotonic_ns=clock)
    ticks = []
    loop.call_every(1.0, lambda: ticks.append(clock.t))
    for t in range(0, 5_500_000_000, 100_000_000):
        clock.t = t
        loop._run_due_timers()
    assert ticks == [1_000_000_000, 2_000_000_000, 3_000_000_000, 4_000_000_000, 5_000_000_000]
    clock.t = 60_000_000_000  # a long stall: one catch-up tick, not 55
    loop._run_due_timers()
    assert len(ticks) == 6
    loop.close()


def test_cancelled_series_stops():
    clock = FakeTime()
    loop = EventLoop(monotonic_ns=clock)
    ticks = []
    h = loop.call_every(1.0, lambda: ticks.append(1))
    clock.t = 1_000_000_000
    loop._run_due_timers()
    h.cancel()
    clock.t = 5_000_000_000
    loop._run_due_timers()
    assert ticks == [1]
    loop.close()


def test_reader_and_failing_handler_does_not_stop_loop():
    loop = EventLoop()
    r, w = os.pipe()
    got = []

    def on_read():
        got.append(os.read(r, 100))
        raise RuntimeError("handler bug")

    loop.add_reader(r, on_read)
    os.write(w, b"x")
    loop.call_later(0.05, loop.stop)
    loop.run(until_ns=time.monotonic_ns() + 2_000_000_000)
    assert got == [b"x"]
    loop.remove_reader(r)
    os.close(r)
    os.close(w)
    loop.close()


def test_signal_handler_runs_from_the_loop():
    loop = EventLoop()
    seen = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (seen.append("usr1"), loop.stop()))
    loop.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    try:
        loop.run(until_ns=time.monotonic_ns() + 2_000_000_000)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
    assert seen == ["usr1"]
    loop.close()
