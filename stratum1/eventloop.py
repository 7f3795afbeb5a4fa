"""The daemon's single poll()-based event loop: file-descriptor handlers, timers and signals.

Modelled on chrony's scheduler: every part of the daemon registers a handler for a descriptor or
a timeout here and never loops on its own. Not asyncio, so that the loop has predictable latency
and a clock-and-network simulator can intercept everything it does (poll, clock_gettime).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Callback = Callable[[], None]


@dataclass(order=True)
class Timer:
    """A scheduled call; ``cancel()`` it to drop it. Ordered by due time (monotonic ns)."""

    due_ns: int
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """poll() over registered descriptors, a heap of monotonic timers, and wake-up on signals."""

    def __init__(self, monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._monotonic_ns = monotonic_ns
        self._poll = select.poll()
        self._readers: dict[int, Callback] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callback] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll.register(self._wake_r, select.POLLIN)

    # -- descriptors ------------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (or in error: the handler finds out)."""
        self._readers[fd] = callback
        self._poll.register(fd, select.POLLIN | select.POLLPRI)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass

    # -- timers -----------------------------------------------------------------------------
    def now_ns(self) -> int:
        """The loop's monotonic time in ns (timers are scheduled against it)."""
        return self._monotonic_ns()

    def call_later(self, delay_s: float, callback: Callback) -> Timer:
        """Run ``callback()`` once after ``delay_s`` seconds."""
        due = self._monotonic_ns() + max(0, int(delay_s * 1e9))
        timer = Timer(due, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def call_every(self, interval_s: float, callback: Callback, first_s: float | None = None) -> Timer:
        """Run ``callback()`` every ``interval_s`` seconds without drift; returns a handle whose
        ``cancel()`` stops the series."""
        interval_ns = int(interval_s * 1e9)
        handle = Timer(0, -1, callback)

        def fire(due: int) -> None:
            if handle.cancelled:
                return
            nxt = due + interval_ns
            now = self._monotonic_ns()
            if nxt <= now:  # we fell behind (suspend, overload): skip missed ticks
                nxt = now + interval_ns
            inner = Timer(nxt, next(self._seq), lambda: fire(nxt))
            heapq.heappush(self._timers, inner)
            callback()

        start = self._monotonic_ns() + int((interval_s if first_s is None else first_s) * 1e9)
        heapq.heappush(self._timers, Timer(start, next(self._seq), lambda: fire(start)))
        return handle

    # -- signals ----------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback()`` from the loop (not from the signal context) when ``signum`` arrives."""
        self._signal_handlers[signum] = callback
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signum, lambda _s, _f: None)

    def _drain_wakeups(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._safe_call(handler)

    # -- running ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    def run(self, until_ns: int | None = None) -> None:
        """Run until ``stop()`` (or until the monotonic time ``until_ns``, for tests)."""
        self._running = True
        while self._running:
            self.run_once(until_ns)
            if until_ns is not None and self._monotonic_ns() >= until_ns:
                break

    def run_once(self, until_ns: int | None = None) -> None:
        timeout_ms = self._run_due_timers()
        if until_ns is not None:
            left = max(0, (until_ns - self._monotonic_ns() + 999_999) // 1_000_000)
            timeout_ms = left if timeout_ms is None else min(timeout_ms, left)
        try:
            events = self._poll.poll(timeout_ms)
        except InterruptedError:
            return
        except OSError as exc:  # pragma: no cover - poll() fails only on programming errors
            if exc.errno == errno.EINTR:
                return
            raise
        for fd, _mask in events:
            if fd == self._wake_r:
                self._drain_wakeups()
                continue
            callback = self._readers.get(fd)
            if callback is not None:
                self._safe_call(callback)

    def _run_due_timers(self) -> int | None:
        """Fire due timers; return the poll timeout in ms until the next one (None: no timer)."""
        while self._timers:
            timer = self._timers[0]
            if timer.cancelled:
                heapq.heappop(self._timers)
                continue
            now = self._monotonic_ns()
            if timer.due_ns > now:
                return (timer.due_ns - now + 999_999) // 1_000_000
            heapq.heappop(self._timers)
            self._safe_call(timer.callback)
        return None

    @staticmethod
    def _safe_call(callback: Callback) -> None:
        # One failing handler must never stop the daemon: log it and carry on.
        try:
            callback()
        except Exception:
            log.exception("event handler %r failed", callback)

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
