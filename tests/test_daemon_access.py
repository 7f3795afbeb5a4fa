"""The daemon's access control and authentication, end to end: real sockets from several
loopback source addresses against a daemon built from ntp.conf lines (restrict, discard, keys)."""

import hashlib
import socket
import struct
import time

import daemon_harness
import pytest

from stratum1.packet import NtpPacket, timestamp_from_ns

LOCAL = daemon_harness.LOCAL_CONF


@pytest.fixture
def run_daemon(tmp_path, monkeypatch):
    started = []

    def start(text):
        d, t, _ = daemon_harness.start(tmp_path, monkeypatch, text)
        started.append((d, t))
        return d, d.servers[0].address

    yield start
    for d, t in started:
        daemon_harness.stop(d, t)


def exchange(server, source, data, timeout=0.5):
    """Send ``data`` from ``source`` (a loopback alias) and return the reply or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, server[:2])
        try:
            return s.recv(2048)
        except TimeoutError:
            return None


def request(mac=b""):
    return NtpPacket(version=4, mode=3, transmit=timestamp_from_ns(time.time_ns())).pack() + mac


def wait_served(server, source="127.0.0.1"):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = exchange(server, source, request())
        if reply is not None and NtpPacket.unpack(reply).leap != 3:
            return NtpPacket.unpack(reply)
        time.sleep(0.05)
    raise AssertionError("never synchronised")


def test_restrict_default_ignore_serves_only_the_listed_host(run_daemon):
    _, server = run_daemon(LOCAL + "restrict default ignore\nrestrict 127.0.0.1\nrestrict 127.0.0.21\n")
    wait_served(server)
    assert exchange(server, "127.0.0.21", request()) is not None
    assert exchange(server, "127.0.0.22", request()) is None
    # ignore also silences mode 6 (ntpq).
    assert exchange(server, "127.0.0.22", bytes([0x16, 0x01]) + bytes(10)) is None


def test_noserve_refuses_time_but_not_queries(run_daemon):
    d, server = run_daemon(LOCAL + "restrict 127.0.0.23 noserve\n")
    wait_served(server)
    assert exchange(server, "127.0.0.23", request()) is None
    # READSTAT (opcode 1), sequence 1: noserve does not stop ntpq.
    readstat = struct.pack("!BBHHHHH", 0x16, 0x01, 1, 0, 0, 0, 0)
    reply = exchange(server, "127.0.0.23", readstat)
    assert reply is not None and reply[1] & 0x80  # a response
    assert exchange(server, "127.0.0.24", request()) is not None


def test_kod_limited_sends_rate_kisses_to_a_fast_client_only(run_daemon):
    _, server = run_daemon(
        LOCAL + "restrict default kod limited\nrestrict 127.0.0.25\ndiscard average 3 minimum 2\n"
    )
    wait_served(server, "127.0.0.25")
    replies = [exchange(server, "127.0.0.26", request(), timeout=0.2) for _ in range(12)]
    answered = [NtpPacket.unpack(r) for r in replies if r is not None]
    kisses = [p for p in answered if p.stratum == 0 and p.refid == b"RATE"]
    assert answered and answered[0].stratum == 11  # the first request is served normally
    assert kisses, "a client sending far above the rate got no RATE kiss"
    assert len(answered) < len(replies), "over-rate requests must mostly be dropped"
    # A different host is unaffected.
    assert NtpPacket.unpack(exchange(server, "127.0.0.27", request())).stratum == 11


def test_authenticated_requests_get_signed_replies_and_unknown_keys_a_crypto_nak(run_daemon, tmp_path):
    keys = tmp_path / "ntp.keys"
    keys.write_text("1 MD5 sharedsecret\n2 MD5 othersecret\n")
    _, server = run_daemon(LOCAL + f"keys {keys}\ntrustedkey 1\n")
    wait_served(server)
    packet = request()
    mac = struct.pack("!I", 1) + hashlib.md5(b"sharedsecret" + packet).digest()
    reply = exchange(server, "127.0.0.1", packet + mac)
    assert reply is not None and len(reply) == 48 + 20
    body, keyid, digest = reply[:48], struct.unpack("!I", reply[48:52])[0], reply[52:]
    assert keyid == 1 and digest == hashlib.md5(b"sharedsecret" + body).digest()
    # Key 2 is in the file but not trusted; key 7 is unknown: both get a crypto-NAK.
    for keyid, secret in ((2, b"othersecret"), (7, b"whatever")):
        mac = struct.pack("!I", keyid) + hashlib.md5(secret + packet).digest()
        nak = exchange(server, "127.0.0.1", packet + mac)
        assert nak is not None and len(nak) == 52 and nak[48:] == bytes(4)


def _control_request(opcode, payload=b"", mac_key=None, keyid=0):
    """A mode-6 request as ntpq builds it: payload padded to 8 before a MAC of the key."""
    data = struct.pack("!BBHHHHH", (2 << 3) | 6, opcode, 9, 0, 0, 0, len(payload)) + payload
    if mac_key is None:
        return data + bytes(-len(data) % 4)
    data += bytes(-len(data) % 8)
    return data + struct.pack("!I", keyid) + hashlib.md5(mac_key + data).digest()


def _control_text(reply):
    count = struct.unpack_from("!H", reply, 10)[0]
    return reply[12 : 12 + count]


def test_ntpq_config_needs_the_control_key_and_applies_lines(run_daemon, tmp_path):
    keys = tmp_path / "ntp.keys"
    keys.write_text("1 MD5 timekeeper\n2 MD5 clientkey\n")
    _, server = run_daemon(
        LOCAL + f"keys {keys}\ntrustedkey 1 2\ncontrolkey 1\nrestrict 127.0.0.34 nomodify\n"
    )
    wait_served(server)
    line = b"restrict 127.0.0.32 ignore"
    # Unsigned, or signed with a key that is not the control key: refused.
    for req in (_control_request(8, line), _control_request(8, line, b"clientkey", 2)):
        reply = exchange(server, "127.0.0.33", req)
        assert reply is not None and reply[1] & 0x40  # error bit
    assert exchange(server, "127.0.0.32", request()) is not None
    # From a nomodify host even the control key does not change anything.
    reply = exchange(server, "127.0.0.34", _control_request(8, line, b"timekeeper", 1))
    assert b"Config Failed" in _control_text(reply)
    # A broken line changes nothing and says why.
    reply = exchange(server, "127.0.0.33", _control_request(8, b"frobnicate 3", b"timekeeper", 1))
    assert b"Config Failed" in _control_text(reply) and b"frobnicate" in _control_text(reply)
    reply = exchange(server, "127.0.0.33", _control_request(8, line, b"timekeeper", 1))
    assert _control_text(reply) == b"Config Succeeded"
    assert exchange(server, "127.0.0.32", request()) is None  # the new restrict line applies
    assert exchange(server, "127.0.0.33", request()) is not None
