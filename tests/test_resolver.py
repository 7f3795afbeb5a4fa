"""Tests for stratum1/resolver.py with fake getaddrinfo functions in a real EventLoop: answers,
retries after failures, a resolver that blocks (the loop keeps running), cancel and close."""

import os
import socket
import threading
import time

import pytest

from stratum1.eventloop import EventLoop
from stratum1.resolver import Resolution, Resolver


def infos(*addresses):
    out = []
    for a in addresses:
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        sockaddr = (a, 0, 0, 0) if fam == socket.AF_INET6 else (a, 0)
        out.append((fam, socket.SOCK_DGRAM, 17, "", sockaddr))
    return out


def run_until(loop, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        loop.run(until_ns=loop.now_ns() + 20_000_000)
    return predicate()


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


def test_answer_comes_back_through_the_loop(loop):
    calls = []

    def gai(host, port, family, socktype):
        calls.append((host, family, socktype))
        return infos("127.0.0.61", "127.0.0.61", "::1", "127.0.0.62")

    resolver = Resolver(loop, getaddrinfo=gai)
    got = []
    resolver.resolve("ntp.example", got.append, family=socket.AF_INET)
    assert got == []  # never synchronous
    assert run_until(loop, lambda: got)
    assert got == [Resolution("ntp.example", ("127.0.0.61", "::1", "127.0.0.62"))]
    assert calls == [("ntp.example", socket.AF_INET, socket.SOCK_DGRAM)]
    assert resolver.stats.answers == 1 and resolver.busy_threads == 0
    resolver.close()


def test_failures_are_retried_with_backoff(loop):
    attempts = []

    def gai(host, *_):
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return infos("127.0.0.63")

    resolver = Resolver(loop, getaddrinfo=gai, retry_min_s=0.05, retry_max_s=1.0)
    got = []
    lookup = resolver.resolve("pool.example", got.append)
    assert run_until(loop, lambda: got)
    assert got[0].addresses == ("127.0.0.63",)
    assert len(attempts) == 3 and lookup.attempts == 3
    assert resolver.stats.failures == 2 and resolver.stats.retries == 2
    # The second wait is twice the first.
    assert attempts[2] - attempts[1] > attempts[1] - attempts[0] + 0.02
    resolver.close()


def test_without_retry_the_failure_is_reported(loop):
    def gai(*_):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = Resolver(loop, getaddrinfo=gai)
    got = []
    resolver.resolve("nowhere.invalid", got.append, retry=False)
    assert run_until(loop, lambda: got)
    assert not got[0].ok and got[0].error == "Name or service not known"
    resolver.close()


def test_empty_answer_is_a_failure(loop):
    resolver = Resolver(loop, getaddrinfo=lambda *_: [], retry_min_s=0.01)
    got = []
    resolver.resolve("empty.example", got.append, retry=False)
    assert run_until(loop, lambda: got)
    assert got[0].error == "no addresses"
    resolver.close()


def test_a_blocked_resolver_never_stalls_the_loop(loop):
    release = threading.Event()
    calls = []

    def gai(host, *_):
        calls.append(host)
        if len(calls) == 1:
            release.wait(10)  # a dead DNS server
        return infos("127.0.0.64")

    resolver = Resolver(loop, getaddrinfo=gai, timeout_s=0.2, retry_min_s=0.05, max_threads=2)
    ticks = []
    tick = loop.call_every(0.01, lambda: ticks.append(1))
    got = []
    resolver.resolve("slow.example", got.append)
    started = time.monotonic()
    assert run_until(loop, lambda: got)
    elapsed = time.monotonic() - started
    assert got[0].addresses == ("127.0.0.64",)
    assert resolver.stats.timeouts == 1 and len(calls) == 2
    assert elapsed < 2.0 and len(ticks) >= 10  # timers kept firing meanwhile
    assert resolver.busy_threads == 1  # the stuck one
    release.set()
    assert run_until(loop, lambda: resolver.busy_threads == 0)
    assert resolver.stats.late == 1 and len(got) == 1  # the late answer is dropped
    tick.cancel()
    resolver.close()


def test_stuck_threads_are_bounded_and_lookups_wait(loop):
    release = threading.Event()
    calls = []

    def gai(host, *_):
        calls.append(host)
        release.wait(10)
        return infos("127.0.0.65")

    resolver = Resolver(loop, getaddrinfo=gai, timeout_s=0.05, retry_min_s=0.02, max_threads=2)
    got = []
    for name in ("a", "b", "c"):
        resolver.resolve(name, got.append)
    run_until(loop, lambda: False, timeout=0.4)
    assert resolver.busy_threads == 2 and len(calls) == 2  # "c" waits; retries too
    release.set()
    assert run_until(loop, lambda: len(got) == 3)
    assert sorted(r.host for r in got) == ["a", "b", "c"]
    resolver.close()


def test_cancel_stops_retries(loop):
    calls = []

    def gai(*_):
        calls.append(1)
        raise socket.gaierror(socket.EAI_AGAIN, "try again")

    resolver = Resolver(loop, getaddrinfo=gai, retry_min_s=0.02)
    got = []
    lookup = resolver.resolve("x.example", got.append)
    assert run_until(loop, lambda: len(calls) >= 2)
    lookup.cancel()
    n = len(calls)
    run_until(loop, lambda: False, timeout=0.2)
    assert len(calls) <= n + 1 and got == []
    resolver.close()


def test_close_with_a_stuck_thread_is_safe(loop):
    release = threading.Event()
    finished = threading.Event()

    def gai(*_):
        release.wait(5)
        finished.set()
        return infos("127.0.0.66")

    resolver = Resolver(loop, getaddrinfo=gai)
    resolver.resolve("stuck.example", lambda r: None)
    resolver.close()
    # The freed descriptor numbers are reused at once: the late thread must not write there.
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        release.set()
        assert finished.wait(5)
        time.sleep(0.05)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(RuntimeError):
        resolver.resolve("again.example", lambda r: None)
