"""Tests for stratum1/query.py against a real NtpServer on loopback."""

import threading
import time

import pytest

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.eventloop import EventLoop
from stratum1.query import query, split_hostport
from stratum1.server import NtpServer
from stratum1.snapshot import SystemSnapshot


def test_split_hostport():
    assert split_hostport("127.0.0.1:11123") == ("127.0.0.1", 11123)
    assert split_hostport("ntp.example") == ("ntp.example", 123)
    assert split_hostport("[::1]:5000") == ("::1", 5000)
    assert split_hostport("::1") == ("::1", 123)


@pytest.fixture
def served():
    snap = SystemSnapshot(leap=0, stratum=1, refid=b"GPS\0", root_dispersion=0.001)
    loop = EventLoop()
    server = NtpServer(("127.0.0.1", 0), lambda: snap, FrozenDisciplineClock(SystemClock()))
    server.attach(loop)
    thread = threading.Thread(target=loop.run, kwargs={"until_ns": time.monotonic_ns() + 10**10})
    thread.start()
    yield server.address
    loop.stop()
    thread.join()
    server.close()
    loop.close()


def test_query_reads_a_synchronised_server(served):
    host, port = served[0], served[1]
    r = query(host, port, timeout=2.0)
    assert r.stratum == 1 and r.refid == "GPS" and r.leap == 0
    assert abs(r.offset) < 0.001
    assert 0 <= r.delay < 0.1
    assert r.root_dispersion == pytest.approx(0.001, abs=1e-4)
    assert "synchronised" in r.describe()


def test_query_times_out_on_silence():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        with pytest.raises(TimeoutError):
            query("127.0.0.1", quiet.getsockname()[1], timeout=0.2)
