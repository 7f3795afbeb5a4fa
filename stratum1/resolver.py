"""Asynchronous host-name resolution for server/pool/peer lines: getaddrinfo in worker threads,
results handed back to the EventLoop through a pipe, failures retried with backoff.

A resolver that never answers costs one stuck thread (at most ``max_threads`` of them), never a
stalled daemon: each lookup has a deadline after which it counts as failed and is retried.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .eventloop import EventLoop, Timer

log = logging.getLogger(__name__)

GetAddrInfo = Callable[..., list]

#: A lookup that has not answered after this many seconds counts as failed.
DEFAULT_TIMEOUT_S = 10.0
#: Retry delays after a failure double from the first to the last.
RETRY_MIN_S = 2.0
RETRY_MAX_S = 600.0
#: Worker threads that may exist at once (stuck ones included).
DEFAULT_MAX_THREADS = 4


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of one lookup: addresses (IP text, each once, in the resolver's order) or an
    error message."""

    host: str
    addresses: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.addresses)


@dataclass(slots=True)
class ResolverStats:
    lookups: int = 0  # getaddrinfo calls started
    answers: int = 0  # lookups that returned addresses
    failures: int = 0  # lookups that returned an error
    timeouts: int = 0  # lookups abandoned at their deadline
    retries: int = 0  # lookups scheduled again after a failure or timeout
    late: int = 0  # answers that came after their deadline (discarded)


class Lookup:
    """One requested name; ``cancel()`` stops its retries and drops any pending answer."""

    def __init__(self, resolver: Resolver, host: str, family: int, callback: Callable[[Resolution], None],
                 retry: bool) -> None:  # fmt: skip
        self.resolver = resolver
        self.host = host
        self.family = family
        self.callback = callback
        self.retry = retry
        self.attempts = 0
        self.cancelled = False
        self.done = False
        self.last_error: str | None = None
        self._retry_s = resolver.retry_min_s
        self._timer: Timer | None = None
        self._attempt: int | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.resolver._forget(self)


class Resolver:
    """Resolves names off the event loop. ``resolve()`` returns at once; the callback runs later
    from the loop with a successful ``Resolution`` (or, with ``retry=False``, the failure)."""

    def __init__(
        self,
        loop: EventLoop,
        *,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self.loop = loop
        self.getaddrinfo = getaddrinfo
        self.timeout_s = timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.max_threads = max(1, max_threads)
        self.stats = ResolverStats()
        self._results: queue.SimpleQueue[tuple[int, Resolution]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the pipe against threads that outlive close()
        self._closed = False
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        loop.add_reader(self._rfd, self._drain)
        self._ids = itertools.count(1)
        self._inflight: dict[int, Lookup] = {}  # attempt id -> lookup still waiting for it
        self._deadlines: dict[int, Timer] = {}
        self._threads = 0
        self._waiting: deque[Lookup] = deque()
        self._logged_errors: dict[str, str] = {}

    @property
    def busy_threads(self) -> int:
        return self._threads

    def resolve(self, host: str, callback: Callable[[Resolution], None], *,
                family: int | None = None, retry: bool = True) -> Lookup:  # fmt: skip
        """Look ``host`` up (AF_INET/AF_INET6 or both when ``family`` is None)."""
        if self._closed:
            raise RuntimeError("resolver is closed")
        lookup = Lookup(self, host, family or socket.AF_UNSPEC, callback, retry)
        self._start(lookup)
        return lookup

    def close(self) -> None:
        """Stop: pending lookups are dropped; stuck threads finish into the void."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.loop.remove_reader(self._rfd)
            os.close(self._rfd)
            os.close(self._wfd)
        for timer in self._deadlines.values():
            timer.cancel()
        for lookup in list(self._inflight.values()) + list(self._waiting):
            lookup.cancel()
        self._inflight.clear()
        self._waiting.clear()

    # -- attempts ------------------------------------------------------------------------------
    def _start(self, lookup: Lookup) -> None:
        lookup._timer = None
        if lookup.cancelled or self._closed:
            return
        if self._threads >= self.max_threads:
            # Every worker is busy (or stuck on a dead resolver): wait for one to come back.
            self._waiting.append(lookup)
            return
        attempt = next(self._ids)
        lookup._attempt = attempt
        lookup.attempts += 1
        self._inflight[attempt] = lookup
        self._threads += 1
        self.stats.lookups += 1
        self._deadlines[attempt] = self.loop.call_later(
            self.timeout_s, lambda: self._timed_out(attempt)
        )
        thread = threading.Thread(
            target=self._work, args=(attempt, lookup.host, lookup.family),
            name=f"resolve {lookup.host}", daemon=True,
        )  # fmt: skip
        thread.start()

    def _work(self, attempt: int, host: str, family: int) -> None:
        try:
            infos = self.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
            addresses: list[str] = []
            for fam, *_rest, sockaddr in infos:
                if fam not in (socket.AF_INET, socket.AF_INET6):
                    continue
                text = str(sockaddr[0])
                if text not in addresses:
                    addresses.append(text)
            result = Resolution(host, tuple(addresses), None if addresses else "no addresses")
        except Exception as exc:  # gaierror, UnicodeError, anything a fake resolver raises
            result = Resolution(host, (), _describe(exc))
        self._results.put((attempt, result))
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass  # the pipe already holds a wake-up byte: the loop drains everything

    def _drain(self) -> None:
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                attempt, result = self._results.get_nowait()
            except queue.Empty:
                break
            self._threads -= 1
            deadline = self._deadlines.pop(attempt, None)
            if deadline is not None:
                deadline.cancel()
            lookup = self._inflight.pop(attempt, None)
            if lookup is None:
                self.stats.late += 1
            else:
                self._finish(lookup, result)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._threads < self.max_threads:
            self._start(self._waiting.popleft())

    def _timed_out(self, attempt: int) -> None:
        self._deadlines.pop(attempt, None)
        lookup = self._inflight.pop(attempt, None)
        if lookup is None:
            return
        self.stats.timeouts += 1
        # The thread stays counted until it returns: a dead resolver must not breed threads.
        self._finish(lookup, Resolution(lookup.host, (), f"no answer within {self.timeout_s:g} s"))

    def _finish(self, lookup: Lookup, result: Resolution) -> None:
        if lookup.cancelled:
            return
        if result.ok:
            self.stats.answers += 1
            lookup.done = True
            lookup.last_error = None
            if self._logged_errors.pop(lookup.host, None) is not None:
                log.info("%s resolved after failures: %s", lookup.host, ", ".join(result.addresses))
            lookup.callback(result)
            return
        self.stats.failures += 1
        lookup.last_error = result.error
        if self._logged_errors.get(lookup.host) != result.error:
            # Once per distinct error: a resolver that is down for hours is not a log flood.
            self._logged_errors[lookup.host] = result.error or ""
            log.warning("cannot resolve %s: %s%s", lookup.host, result.error,
                        "; retrying" if lookup.retry else "")  # fmt: skip
        if not lookup.retry:
            lookup.done = True
            lookup.callback(result)
            return
        self.stats.retries += 1
        delay = lookup._retry_s
        lookup._retry_s = min(self.retry_max_s, delay * 2)
        lookup._timer = self.loop.call_later(delay, lambda: self._start(lookup))

    def _forget(self, lookup: Lookup) -> None:
        if lookup._attempt is not None:
            self._inflight.pop(lookup._attempt, None)
        try:
            self._waiting.remove(lookup)
        except ValueError:
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror) and exc.args and len(exc.args) > 1:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


__all__ = ["Lookup", "Resolution", "Resolver", "ResolverStats"]
