"""Tests for stratum1/upstream.py: stratum1's client side against a local NtpServer (server.py)
with a snapshot the test controls, in a real EventLoop on loopback; pools, re-resolution, KoD,
symmetric peers and keys. Slow schedules run in virtual time on the loop's monotonic clock."""

import random
import socket
from dataclasses import replace

import pytest

import stratum1.peer as peer_module
from stratum1.association import NTP_UNREACH
from stratum1.auth import Authenticator
from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.config.model import AssociationConfig
from stratum1.eventloop import EventLoop
from stratum1.keys import parse_keys
from stratum1.ntptime import ns_to_ntp64
from stratum1.packet import NtpPacket
from stratum1.resolver import Resolution
from stratum1.server import KOD, NtpServer, build_kod, build_reply
from stratum1.snapshot import SystemSnapshot
from stratum1.system import SystemProcess
from stratum1.upstream import Upstream, parse_literal

SERVER_HOST = "127.0.0.61"


def synced(clock, **kw):
    return SystemSnapshot(leap=0, stratum=1, precision=-20, root_dispersion=0.0005,
                          refid=b"GPS\0", reference_ns=clock.now_ns() - 10**9, **kw)


class ShiftedClock(FrozenDisciplineClock):
    """The system clock moved by ``shift_ns``: a server whose time differs from ours."""

    def __init__(self, shift_ns):
        super().__init__(SystemClock())
        self.shift_ns = shift_ns

    def now_ns(self):
        return super().now_ns() + self.shift_ns


class Rig:
    """A loop, our clock, a system process and an Upstream, torn down by the fixture."""

    def __init__(self, loop, clock, resolver=None, authenticator=None, **kw):
        self.loop = loop
        self.clock = clock
        self.system = SystemProcess(precision=-20, discipline=None)
        self.updates = 0
        self.ids = iter(range(1, 1000))
        self.upstream = Upstream(loop, clock, self.system, on_update=self._on_update,
                                 next_assoc_id=lambda: next(self.ids), resolver=resolver,
                                 authenticator=authenticator,
                                 **{"rng": random.Random(7), **kw})

    def _on_update(self):
        self.updates += 1
        self.system.update(self.clock.now_ns())

    def run_until(self, predicate, timeout_s):
        deadline = self.loop.now_ns() + int(timeout_s * 1e9)
        while not predicate() and self.loop.now_ns() < deadline:
            self.loop.run(until_ns=min(deadline, self.loop.now_ns() + 20_000_000))
        return predicate()


@pytest.fixture
def fast(monkeypatch):
    """Volleys at 20 ms instead of 2 s and an immediate first poll, so a real-time test is quick."""
    monkeypatch.setattr(peer_module, "BURST_SPACING_S", 0.02)
    monkeypatch.setattr(peer_module, "STARTUP_SPREAD_S", 0.01)


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture
def cleanup():
    items = []
    yield items.append
    for item in reversed(items):
        item.close()


def start_server(loop, cleanup, clock, snapshot, host=SERVER_HOST, **kw):
    server = NtpServer((host, 0), lambda: snapshot, clock, kernel_timestamps=False, **kw)
    server.attach(loop)
    cleanup(server)
    return server, server.address[1]


def cfg(host=SERVER_HOST, kind="server", **kw):
    return AssociationConfig(kind=kind, host=host, family=None, **kw)


# -- against our own server in real time -----------------------------------------------------------


def test_iburst_server_synchronises_in_a_real_loop(loop, cleanup, fast):
    ours = FrozenDisciplineClock(SystemClock())
    theirs = ShiftedClock(250_000_000)  # the server is 250 ms ahead
    server, port = start_server(loop, cleanup, theirs, synced(theirs))
    rig = Rig(loop, ours, kernel_timestamps=True)
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg(iburst=True, minpoll=4), port=port)
    [member] = source.members
    a = member.association
    assert rig.run_until(lambda: a.received >= 6, 5.0), member.peer.stats
    assert a.reach == 1 and a.stratum == 1 and a.refid == b"GPS\0"
    assert a.offset == pytest.approx(0.25, abs=0.005)
    assert 0 < a.delay < 0.005
    assert rig.system.system_peer is a
    assert rig.system.snapshot.stratum == 2
    assert server.stats.replied >= 6 and rig.upstream.stats.received >= 6
    assert sum(member.peer.stats.dropped.values()) == 0
    totals = rig.upstream.counters()
    assert totals["accepted"] == a.received and totals["bogus"] == 0
    assert totals["socket_received"] >= totals["received"]


def test_unsynchronised_server_is_counted_and_never_selected(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    _server, port = start_server(loop, cleanup, clock, SystemSnapshot())  # leap 3, stratum 16
    rig = Rig(loop, clock)
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg(iburst=True), port=port).members
    stats = member.peer.stats
    assert rig.run_until(lambda: stats.received >= 3, 5.0)
    assert stats.accepted == 0
    # A server with no time answers stratum 0: a kiss code of zeros, or leap 3.
    assert stats.dropped["kod"] + stats.dropped["unsynchronized"] == stats.received
    assert member.association.reach == 0 and rig.system.system_peer is None


def test_rate_kod_slows_the_poll(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    _server, port = start_server(loop, cleanup, clock, synced(clock), access=lambda *_: KOD)
    rig = Rig(loop, clock)
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg(iburst=True, minpoll=6), port=port).members
    assert rig.run_until(lambda: member.peer.kod_rate >= 1, 5.0)
    assert member.association.poll >= 7 and member.association.minpoll >= 7
    # The volley stopped: nothing more is sent before the (much longer) next poll.
    sent = member.peer.stats.sent
    rig.run_until(lambda: False, 0.2)
    assert member.peer.stats.sent == sent


class Responder:
    """A bare UDP socket answering every request through ``make_reply(request) -> bytes``."""

    def __init__(self, loop, host, make_reply):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.loop = loop
        self.make_reply = make_reply
        self.requests = []
        loop.add_reader(self.sock.fileno(), self._read)

    def _read(self):
        data, address = self.sock.recvfrom(2048)
        self.requests.append(data)
        reply = self.make_reply(data)
        if reply is not None:
            self.sock.sendto(reply, address)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def test_deny_kod_demobilises_the_association(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    responder = Responder(loop, "127.0.0.62", lambda req: build_kod(req, b"DENY"))
    cleanup(responder)
    rig = Rig(loop, clock)
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg("127.0.0.62", iburst=True), port=responder.port)
    assoc_id = source.members[0].association.assoc_id
    assert rig.run_until(lambda: source.demobilized == "DENY", 5.0)
    assert source.members == [] and rig.system.get(assoc_id) is None
    rig.run_until(lambda: False, 0.2)
    assert len(responder.requests) == 1  # nothing more was sent


def test_forged_reply_from_another_port_is_not_taken(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    snap = synced(clock)
    replies = []

    def reply_then_forge(req):
        replies.append(build_reply(req, clock.now_ns(), snap, clock.now_ns()))
        return None  # the genuine port stays silent

    responder = Responder(loop, "127.0.0.63", reply_then_forge)
    cleanup(responder)
    rig = Rig(loop, clock)
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg("127.0.0.63", iburst=True), port=responder.port).members
    assert rig.run_until(lambda: replies, 2.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        forger.bind(("127.0.0.63", 0))
        client_port = rig.upstream.sockets._socks[socket.AF_INET].getsockname()[1]
        forger.sendto(replies[0], ("127.0.0.1", client_port))
        rig.run_until(lambda: rig.upstream.stats.unknown_source, 2.0)
    assert rig.upstream.stats.unknown_source == 1 and member.peer.stats.received == 0


# -- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keytype,secret", [("MD5", "Sesame"),
                                            ("AES128CMAC", "00112233445566778899aabbccddeeff")])
def test_authenticated_server(loop, cleanup, fast, keytype, secret):
    clock = FrozenDisciplineClock(SystemClock())
    keys = parse_keys(f"7 {keytype} {secret}\n").keys
    _server, port = start_server(loop, cleanup, clock, synced(clock),
                                 authenticate=Authenticator(keys, trusted=[7]))
    rig = Rig(loop, clock, authenticator=Authenticator(keys, trusted=[7]))
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg(iburst=True, key=7), port=port).members
    assert rig.run_until(lambda: member.peer.stats.accepted >= 3, 5.0)
    assert sum(member.peer.stats.dropped.values()) == 0


def test_wrong_key_is_rejected(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    server_keys = parse_keys("7 MD5 right\n").keys
    our_keys = parse_keys("7 MD5 wrong\n").keys
    _server, port = start_server(loop, cleanup, clock, synced(clock),
                                 authenticate=Authenticator(server_keys, trusted=[7]))
    rig = Rig(loop, clock, authenticator=Authenticator(our_keys, trusted=[7]))
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg(iburst=True, key=7), port=port).members
    stats = member.peer.stats
    assert rig.run_until(lambda: stats.received >= 3, 5.0)
    assert stats.accepted == 0 and stats.dropped["crypto_nak"] == stats.received
    assert rig.system.system_peer is None


def test_unauthenticated_reply_to_a_keyed_association_is_rejected(loop, cleanup, fast):
    clock = FrozenDisciplineClock(SystemClock())
    _server, port = start_server(loop, cleanup, clock, synced(clock))  # knows no keys
    keys = parse_keys("7 MD5 k\n").keys
    rig = Rig(loop, clock, authenticator=Authenticator(keys, trusted=[7]))
    cleanup(rig.upstream)
    [member] = rig.upstream.add(cfg(iburst=True, key=7), port=port).members
    assert rig.run_until(lambda: member.peer.stats.received >= 2, 5.0)
    assert member.peer.stats.accepted == 0
    assert member.peer.stats.dropped["crypto_nak"] == member.peer.stats.received


def test_association_with_an_unknown_key_never_polls(loop, cleanup):
    rig = Rig(loop, FrozenDisciplineClock(SystemClock()),
              authenticator=Authenticator(parse_keys("7 MD5 k\n").keys, trusted=[7]))
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg(key=8))
    assert source.members == [] and "key 8" in source.error


# -- virtual time: pools, re-resolution, backoff -------------------------------------------------


class VirtualTime:
    """The loop's monotonic clock and our wall clock, advanced by the test from timer to timer
    (a short real pause lets loopback datagrams arrive between steps)."""

    def __init__(self):
        self.mono = 10**12
        self.base = 1_767_225_600 * 10**9

    def monotonic_ns(self):
        return self.mono

    def now_ns(self):
        return self.base + self.mono

    def run(self, loop, seconds, max_steps=20_000):
        import time as _time

        end = self.mono + int(seconds * 1e9)
        for _ in range(max_steps):
            loop.run_once(until_ns=self.mono)
            _time.sleep(0.0005)
            loop.run_once(until_ns=self.mono)
            due = [t.due_ns for t in loop._timers if not t.cancelled]
            nxt = min(due) if due else end
            if nxt > end:
                self.mono = end
                loop.run_once(until_ns=self.mono)
                return
            self.mono = max(self.mono, nxt)
        raise AssertionError("virtual time made no progress")


class VirtualClock(FrozenDisciplineClock):
    def __init__(self, vt):
        super().__init__(SystemClock())
        self.vt = vt

    def now_ns(self):
        return self.vt.now_ns()

    def monotonic_ns(self):
        return self.vt.monotonic_ns()


class FakeResolver:
    """Answers from a dict on the next loop turn; counts lookups."""

    def __init__(self, loop, table):
        self.loop = loop
        self.table = table
        self.lookups = []

    def resolve(self, host, callback, *, family=None, retry=True):
        self.lookups.append((host, family))

        class _Lookup:
            cancelled = False

            def cancel(self):
                self.cancelled = True

        lookup = _Lookup()
        addresses = tuple(self.table[host])

        def answer():
            if not lookup.cancelled:
                callback(Resolution(host, addresses))

        self.loop.call_later(0, answer)
        return lookup


@pytest.fixture
def vt():
    return VirtualTime()


@pytest.fixture
def vloop(vt):
    lp = EventLoop(monotonic_ns=vt.monotonic_ns)
    yield lp
    lp.close()


def virtual_server(vloop, cleanup, vt, host):
    clock = VirtualClock(vt)
    snap = SystemSnapshot(leap=0, stratum=2, precision=-20, root_dispersion=0.001,
                          refid=b"\x7f\0\0\x01", reference_ns=vt.now_ns())
    return start_server(vloop, cleanup, clock, snap, host=host)


def test_pool_replaces_an_unreachable_member(vloop, vt, cleanup):
    _server, port = virtual_server(vloop, cleanup, vt, "127.0.0.64")
    resolver = FakeResolver(vloop, {"pool.example": ["127.0.0.65", "127.0.0.64"]})
    rig = Rig(vloop, VirtualClock(vt), resolver=resolver)
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg("pool.example", kind="pool", minpoll=3), port=port, pool_size=1)
    vt.run(vloop, 1)
    [dead] = source.members
    assert dead.address == "127.0.0.65"  # nothing answers there
    vt.run(vloop, 8 * (NTP_UNREACH + 2) + 60)
    assert [m.address for m in source.members] == ["127.0.0.64"]
    assert rig.system.get(dead.association.assoc_id) is None
    assert len(resolver.lookups) >= 2
    vt.run(vloop, 100)
    live = source.members[0].association
    assert live.reach != 0 and rig.system.system_peer is live


def test_pool_fills_up_to_its_size_without_duplicates(vloop, vt, cleanup):
    resolver = FakeResolver(vloop, {"pool.example": ["127.0.0.66", "127.0.0.67", "127.0.0.66"],
                                    "other.example": ["127.0.0.67"]})
    rig = Rig(vloop, VirtualClock(vt), resolver=resolver)
    cleanup(rig.upstream)
    server = rig.upstream.add(cfg("other.example"), port=12345)
    pool = rig.upstream.add(cfg("pool.example", kind="pool"), port=12345, pool_size=3)
    vt.run(vloop, 1)
    assert [m.address for m in server.members] == ["127.0.0.67"]
    assert [m.address for m in pool.members] == ["127.0.0.66"]
    vt.run(vloop, 61)  # short of members: the pool looks its name up again
    assert sum(1 for h, _ in resolver.lookups if h == "pool.example") >= 2


def test_server_name_is_followed_when_it_moves(vloop, vt, cleanup):
    _server, port = virtual_server(vloop, cleanup, vt, "127.0.0.68")
    table = {"ntp.example": ["127.0.0.69"]}
    resolver = FakeResolver(vloop, table)
    rig = Rig(vloop, VirtualClock(vt), resolver=resolver)
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg("ntp.example", minpoll=3), port=port)
    vt.run(vloop, 1)
    assert [m.address for m in source.members] == ["127.0.0.69"]
    table["ntp.example"] = ["127.0.0.68"]
    vt.run(vloop, 8 * (NTP_UNREACH + 2))
    assert [m.address for m in source.members] == ["127.0.0.68"]
    vt.run(vloop, 40)
    assert source.members[0].association.reach != 0


def test_unreachable_literal_backs_off_and_keeps_trying(vloop, vt, cleanup):
    rig = Rig(vloop, VirtualClock(vt), resolver=FakeResolver(vloop, {}))
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg("127.0.0.69", minpoll=3, maxpoll=6, iburst=True), port=9)
    [member] = source.members
    vt.run(vloop, 3000)
    a = member.association
    assert a.reach == 0 and a.poll == 6  # backed off to maxpoll
    assert source.members == [member]  # an address literal is never dropped
    sent = member.peer.stats.sent
    vt.run(vloop, 640)
    assert 6 * 9 <= member.peer.stats.sent - sent <= 6 * 11  # iburst volleys at 2**6 s


def test_family_flags(loop, cleanup):
    rig = Rig(loop, FrozenDisciplineClock(SystemClock()), ipv6=False)
    cleanup(rig.upstream)
    up = rig.upstream
    assert up.family_for(None) == socket.AF_INET
    assert up.family_for(socket.AF_INET6) is None
    source = up.add(cfg("::1"))
    assert source.members == [] and "family" in source.error
    assert parse_literal("[::1]") == "::1" and parse_literal("fe80::1%eth0") == "fe80::1"
    assert parse_literal("ntp.example") is None


def test_symmetric_peer_packets_from_port_123_reach_the_association(vloop, vt, cleanup):
    rig = Rig(vloop, VirtualClock(vt), get_snapshot=lambda: SystemSnapshot())
    cleanup(rig.upstream)
    source = rig.upstream.add(cfg("127.0.0.69", kind="peer"), port=123)
    vt.run(vloop, 1.5)
    [member] = source.members
    peer = member.peer
    assert peer.stats.sent == 1
    t1 = peer._t1_ns
    now = t1 + 11_000_000
    # What the remote peer sends on its own poll: mode 1, origin = our last transmit.
    packet = NtpPacket(mode=1, stratum=1, leap=0, precision=-20, refid=b"GPS\0",
                       reference=ns_to_ntp64(t1 - 10**9), origin=peer._aorg,
                       receive=ns_to_ntp64(t1 + 5_000_000), transmit=ns_to_ntp64(t1 + 6_000_000))
    assert rig.upstream.peer_handler(packet.pack(), ("127.0.0.69", 123), now) is None
    assert peer.stats.accepted == 1 and member.association.reach == 1
    assert rig.upstream.peer_handler(replace(packet, transmit=1).pack(), ("127.0.0.9", 123),
                                     now) is None  # unknown sender: ignored
