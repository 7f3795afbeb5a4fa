"""Tests for stratum1/sdnotify.py against a real AF_UNIX datagram socket."""

import os
import socket

import pytest

from stratum1.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_ready_status_and_stopping(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving, not synchronised")
    assert sock.recv(1024) == b"READY=1\nSTATUS=serving, not synchronised"
    assert n.status("synchronised to GPS_NMEA(0)")
    assert sock.recv(1024) == b"STATUS=synchronised to GPS_NMEA(0)"
    assert n.stopping()
    assert sock.recv(1024) == b"STOPPING=1"


def test_abstract_namespace_socket():
    name = f"stratum1-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(1024) == b"WATCHDOG=1"


def test_not_under_systemd_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_s is None


def test_watchdog_interval_only_for_this_process():
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_s == 20.0
    other = Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None or os.getpid() == 1


def test_a_vanished_socket_is_reported_once(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.status("a") and not n.status("b")
    assert caplog.text.count("cannot notify systemd") == 1
