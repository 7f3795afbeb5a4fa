"""Tests for stratum1/peer.py: requests, offset/delay against hand values, every sanity test with
a crafted reply, kiss-o'-death, iburst/burst volleys, poll backoff, and the sign/verify hook."""

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1.association import NTP_UNREACH, Association
from stratum1.auth import Authenticator
from stratum1.keys import parse_keys
from stratum1.ntptime import ns_to_ntp64
from stratum1.packet import MODE_ACTIVE, MODE_CLIENT, MODE_SERVER, Mac, NtpPacket
from stratum1.peer import (
    BURST_COUNT,
    BURST_SPACING_S,
    IBURST_COUNT,
    REASONS,
    KeyAuth,
    Peer,
)
from stratum1.server import build_kod, build_reply
from stratum1.snapshot import SystemSnapshot

NOW = 1_767_225_600_000_000_000
MS = 1_000_000
SERVER = SystemSnapshot(
    leap=0,
    stratum=1,
    precision=-20,
    poll=6,
    root_delay=0.0,
    root_dispersion=0.001,
    refid=b"GPS\0",
    reference_ns=NOW - 10 * 1_000_000_000,
)


def make_peer(**kwargs) -> Peer:
    assoc_kw = {k: kwargs.pop(k) for k in ("minpoll", "maxpoll") if k in kwargs}
    assoc = Association(1, "127.0.0.60", refclock=False, address="127.0.0.60", **assoc_kw)
    return Peer(assoc, rng=random.Random(5), **kwargs)


def exchange(peer, *, offset_s=0.5, one_way_ms=10, hold_ms=1, now=NOW, snapshot=SERVER,
             mutate=None):
    """Send a request at ``now``; answer it like a server whose clock is ``offset_s`` ahead.
    ``mutate(packet) -> packet`` alters the reply. Returns (reply bytes, t4)."""
    request = peer.request(now)
    off = int(offset_s * 1e9)
    t2 = now + one_way_ms * MS + off
    t3 = t2 + hold_ms * MS
    t4 = t3 - off + one_way_ms * MS
    reply = build_reply(request, t2, snapshot, t3)
    if mutate is not None:
        reply = mutate(NtpPacket.unpack(reply)).pack()
    return reply, t4


def edit(**fields):
    return lambda p: replace(p, **fields)


# -- requests ------------------------------------------------------------------------------------


def test_client_request_reveals_nothing_and_uses_a_random_origin():
    peer = make_peer()
    a = NtpPacket.unpack(peer.request(NOW))
    b = NtpPacket.unpack(peer.request(NOW))
    assert (a.mode, a.version, a.poll) == (MODE_CLIENT, 4, peer.association.poll)
    assert (a.stratum, a.refid, a.reference, a.origin, a.receive) == (0, bytes(4), 0, 0, 0)
    assert a.transmit != b.transmit and a.transmit != ns_to_ntp64(NOW)


def test_version_is_what_the_association_asks():
    peer = make_peer(version=3)
    assert NtpPacket.unpack(peer.request(NOW)).version == 3
    with pytest.raises(ValueError):
        make_peer(version=5)


def test_symmetric_request_carries_system_variables_and_echoes_the_peer():
    snap = replace(SERVER, stratum=2, refid=b"\x7f\0\0\x01")
    peer = make_peer(mode=MODE_ACTIVE, get_snapshot=lambda: snap)
    first = NtpPacket.unpack(peer.request(NOW))
    assert (first.mode, first.stratum, first.refid) == (MODE_ACTIVE, 2, b"\x7f\0\0\x01")
    assert first.transmit == ns_to_ntp64(NOW)
    # The peer answers in mode 2; our next packet echoes its transmit and our receive time.
    reply = NtpPacket(mode=2, stratum=1, leap=0, refid=b"GPS\0", reference=ns_to_ntp64(NOW),
                      origin=first.transmit, receive=ns_to_ntp64(NOW + 5 * MS),
                      transmit=ns_to_ntp64(NOW + 6 * MS))
    assert peer.receive(reply.pack(), NOW + 11 * MS).accepted
    second = NtpPacket.unpack(peer.request(NOW + 64 * 10**9))
    assert second.origin == reply.transmit
    assert second.receive == ns_to_ntp64(NOW + 11 * MS)


# -- offset and delay ----------------------------------------------------------------------------


def test_offset_delay_and_dispersion_from_hand_values():
    peer = make_peer()
    reply, t4 = exchange(peer, offset_s=0.5, one_way_ms=10, hold_ms=1)
    result = peer.receive(reply, t4)
    assert result.accepted
    m = result.measurement
    # t1=0, t2=0.510, t3=0.511, t4=0.021: offset ((0.510)+(0.490))/2, delay 0.021-0.001.
    assert m.offset == pytest.approx(0.5, abs=2e-9)
    assert m.delay == pytest.approx(0.020, abs=2e-9)
    assert m.dispersion == pytest.approx(2**-20 + 2**-20 + 15e-6 * 0.021, rel=1e-9)
    assert m.local_ns == NOW + (t4 - NOW) // 2
    a = peer.association
    assert (a.reach, a.stratum, a.refid, a.root_dispersion) == (1, 1, b"GPS\0", pytest.approx(0.001, abs=2e-5))
    assert a.offset == pytest.approx(0.5, abs=2e-9)
    assert peer.stats.accepted == 1


def test_negative_offset_and_asymmetric_path():
    peer = make_peer()
    request = peer.request(NOW)
    # Server 2 s behind; 30 ms out, 10 ms back: offset is off by half the asymmetry (10 ms).
    t2 = NOW + 30 * MS - 2 * 10**9
    t3 = t2
    t4 = NOW + 40 * MS
    result = peer.receive(build_reply(request, t2, SERVER, t3), t4)
    assert result.measurement.offset == pytest.approx(-2.0 + 0.010, abs=2e-9)
    assert result.measurement.delay == pytest.approx(0.040, abs=2e-9)


# -- sanity tests, one crafted reply each ----------------------------------------------------------


def test_malformed_and_bad_mode():
    peer = make_peer()
    peer.request(NOW)
    assert peer.receive(b"\x24" * 20, NOW).reason == "malformed"
    reply, t4 = exchange(peer, mutate=edit(mode=MODE_CLIENT))
    assert peer.receive(reply, t4).reason == "bad_mode"
    assert peer.association.reach == 0


def test_duplicate_reply_is_dropped():
    peer = make_peer()
    reply, t4 = exchange(peer)
    assert peer.receive(reply, t4).accepted
    assert peer.receive(reply, t4 + MS).reason == "duplicate"
    assert peer.stats.dropped["duplicate"] == 1


def test_bogus_origin_and_unsolicited():
    peer = make_peer()
    reply, t4 = exchange(peer, mutate=lambda p: replace(p, origin=p.origin ^ 1))
    assert peer.receive(reply, t4).reason == "bogus"
    fresh = make_peer()
    unsolicited = NtpPacket(mode=MODE_SERVER, stratum=1, origin=12345, receive=1, transmit=2)
    assert fresh.receive(unsolicited.pack(), NOW).reason == "bogus"


def test_reply_to_an_older_request_is_bogus():
    peer = make_peer()
    old, t4 = exchange(peer)
    peer.request(NOW + 2 * 10**9)  # the volley moved on
    assert peer.receive(old, t4).reason == "bogus"


@pytest.mark.parametrize("field", ["receive", "transmit"])
def test_zero_timestamps_are_invalid(field):
    peer = make_peer()
    reply, t4 = exchange(peer, mutate=edit(**{field: 0}))
    assert peer.receive(reply, t4).reason == "invalid"


@pytest.mark.parametrize(
    "mutate",
    [edit(leap=3), edit(reference=0), lambda p: replace(p, reference=p.transmit + (5 << 32))],
    ids=["leap3", "no-reference", "reference-in-future"],
)
def test_unsynchronized_server(mutate):
    peer = make_peer()
    reply, t4 = exchange(peer, mutate=mutate)
    assert peer.receive(reply, t4).reason == "unsynchronized"
    assert peer.association.reach == 0


def test_stratum_out_of_range():
    peer = make_peer()
    reply, t4 = exchange(peer, mutate=edit(stratum=16))
    assert peer.receive(reply, t4).reason == "stratum"
    ceiling = make_peer(ceiling=5)
    reply, t4 = exchange(ceiling, mutate=edit(stratum=5))
    assert ceiling.receive(reply, t4).reason == "stratum"


@pytest.mark.parametrize(
    "mutate",
    [edit(root_dispersion=17 << 16), edit(root_delay=0xFFFF0000)],
    ids=["root-distance", "negative-root-delay"],
)
def test_bad_header(mutate):
    peer = make_peer()
    reply, t4 = exchange(peer, mutate=mutate)
    assert peer.receive(reply, t4).reason == "bad_header"


def test_round_trip_beyond_maxdisperse():
    peer = make_peer()
    reply, t4 = exchange(peer, one_way_ms=9000)
    assert peer.receive(reply, t4).reason == "bad_delay"


def test_distance_too_large():
    peer = make_peer(maxdist=1.5)
    reply, t4 = exchange(peer, snapshot=replace(SERVER, root_dispersion=1.49))
    assert peer.receive(reply, t4).reason == "distance"
    ok = make_peer(maxdist=1.5)
    reply, t4 = exchange(ok, snapshot=replace(SERVER, root_dispersion=1.2))
    assert ok.receive(reply, t4).accepted


def test_every_reason_has_a_counter():
    assert set(make_peer().stats.dropped) == set(REASONS)


# -- kiss-o'-death ------------------------------------------------------------------------------


def kod(peer, code, now=NOW, poll=0):
    request = peer.request(now)
    reply = NtpPacket.unpack(build_kod(request, code))
    return peer.receive(replace(reply, poll=max(reply.poll, poll)).pack(), now + MS)


def test_kod_rate_raises_the_poll_interval():
    peer = make_peer(minpoll=6, maxpoll=10)
    a = peer.association
    result = kod(peer, b"RATE")
    assert (result.reason, result.kiss, result.demobilize) == ("kod", b"RATE", False)
    assert a.poll == 7 and a.minpoll == 7
    assert result.reschedule_s == 2.0**7
    result = kod(peer, b"RATE", poll=10)
    assert a.poll == 10 and a.minpoll == 10
    # The raised floor survives the association's own poll updates.
    a.poll_missed(NOW)
    assert a.poll >= 10
    assert peer.stats.kod_codes == {"RATE": 2}


@pytest.mark.parametrize("code", [b"DENY", b"RSTR"])
def test_kod_deny_and_rstr_demobilize(code):
    peer = make_peer(iburst=True)
    result = kod(peer, code)
    assert result.demobilize and peer.demobilized == code.decode()
    assert peer.poll(NOW + 10**9).request is None


def test_other_kiss_codes_only_drop_the_packet():
    peer = make_peer()
    result = kod(peer, b"INIT")
    assert (result.reason, result.demobilize, peer.demobilized) == ("kod", False, None)


def test_spoofed_kod_with_wrong_origin_is_ignored():
    peer = make_peer()
    request = peer.request(NOW)
    forged = NtpPacket.unpack(build_kod(request, b"DENY"))
    result = peer.receive(replace(forged, origin=forged.origin ^ 0xFF).pack(), NOW + MS)
    assert result.reason == "bogus" and peer.demobilized is None


# -- volleys and backoff -----------------------------------------------------------------------


def run_polls(peer, count, start=NOW, answer=None):
    """Call poll() ``count`` times following its own schedule; ``answer(peer, request, now)``
    may reply. Returns [(time_s_since_start, action)]."""
    now = start
    out = []
    for _ in range(count):
        action = peer.poll(now)
        out.append(((now - start) / 1e9, action))
        if answer is not None and action.request is not None:
            answer(peer, action.request, now)
        now += int(action.next_s * 1e9)
    return out


def answer_ok(peer, request, now):
    t2 = now + 5 * MS
    assert peer.receive(build_reply(request, t2, SERVER, t2), now + 10 * MS).accepted


def test_iburst_volley_of_six_at_two_seconds_then_the_poll_interval():
    peer = make_peer(iburst=True, minpoll=6)
    polls = run_polls(peer, IBURST_COUNT + 1, answer=answer_ok)
    times = [t for t, _ in polls]
    assert times[:IBURST_COUNT] == [BURST_SPACING_S * i for i in range(IBURST_COUNT)]
    # The clock can be set from six samples within 10 s; the next poll is 2**6 after the start.
    assert 64.0 <= times[IBURST_COUNT] <= 64.0 * (1 + 255 / 4096)
    # One volley, then the first packet of the next poll: two polls answered.
    assert peer.association.reach == 0b11
    assert peer.association.received == IBURST_COUNT + 1
    assert peer.stats.volleys == 1


def test_no_iburst_sends_one_packet_per_poll():
    peer = make_peer(minpoll=4)
    polls = run_polls(peer, 3, answer=answer_ok)
    gaps = [b[0] - a[0] for a, b in zip(polls, polls[1:], strict=False)]
    assert all(16.0 <= g <= 16.0 * (1 + 255 / 4096) for g in gaps)
    assert peer.association.reach == 0b111


def test_burst_only_when_reachable():
    peer = make_peer(burst=True, minpoll=6)
    first = run_polls(peer, 1, answer=answer_ok)
    assert first[0][1].next_s > BURST_SPACING_S  # unreachable: a single packet
    polls = run_polls(peer, BURST_COUNT, start=NOW + 70 * 10**9, answer=answer_ok)
    assert [a.next_s for _, a in polls[:-1]] == [BURST_SPACING_S] * (BURST_COUNT - 1)
    assert polls[-1][1].next_s > BURST_SPACING_S


def test_silence_counts_missed_polls_backs_off_and_asks_for_replacement():
    peer = make_peer(iburst=True, minpoll=6, maxpoll=10)
    a = peer.association
    volley = IBURST_COUNT
    polls = run_polls(peer, volley * (NTP_UNREACH + 4) + 1)
    missed = [act for _, act in polls if act.missed]
    assert len(missed) == NTP_UNREACH + 4
    assert a.reach == 0 and a.unreach == NTP_UNREACH + 4
    assert a.poll > 6  # backed off
    assert peer.replace_due
    intervals = [act.next_s for _, act in polls if act.next_s > BURST_SPACING_S]
    assert intervals[-1] > intervals[0] * 2


def test_answer_after_silence_restores_reach():
    peer = make_peer(minpoll=6)
    run_polls(peer, 3)
    assert peer.association.reach == 0
    run_polls(peer, 2, start=NOW + 10**12, answer=answer_ok)
    assert peer.association.reach & 1 and not peer.replace_due


# -- sign / verify hook ----------------------------------------------------------------------------


class FakeAuth:
    keyid = 7

    def __init__(self, verdict=None):
        self.verdict = verdict
        self.checked = []

    def sign(self, data):
        return data + (7).to_bytes(4, "big") + bytes(16)

    def check(self, data, host):
        self.checked.append(host)
        return self.verdict


def test_requests_are_signed_and_replies_checked():
    auth = FakeAuth()
    peer = make_peer(auth=auth)
    request = peer.request(NOW)
    assert len(request) == 68 and NtpPacket.unpack(request).mac.keyid == 7
    reply, t4 = exchange(peer)
    assert peer.receive(reply, t4, host="127.0.0.60").accepted
    assert auth.checked == ["127.0.0.60"]


@pytest.mark.parametrize("verdict", ["auth", "crypto_nak"])
def test_failed_verification_drops_the_reply(verdict):
    peer = make_peer(auth=FakeAuth(verdict))
    reply, t4 = exchange(peer)
    assert peer.receive(reply, t4).reason == verdict
    assert peer.association.reach == 0


@pytest.mark.parametrize("keytype", ["MD5", "AES128CMAC"])
def test_key_auth_with_the_real_authenticator(keytype):
    secret = "0123456789abcdef0123456789abcdef" if keytype == "AES128CMAC" else "s3cret"
    keys = parse_keys(f"5 {keytype} {secret}\n9 {keytype} {secret[::-1]}\n").keys
    ours = Authenticator(keys, trusted=[5, 9])
    peer = make_peer(auth=KeyAuth(ours, 5))
    request = peer.request(NOW)
    packet = NtpPacket.unpack(request)
    assert packet.mac.keyid == 5
    covered = request[:48]
    server_auth = Authenticator(keys, trusted=[5])
    signer = server_auth(covered, packet.mac)
    assert signer is not None  # the server accepts our MAC
    body = build_reply(request[:48], NOW + 5 * MS, SERVER, NOW + 5 * MS)
    assert peer.receive(body + signer(body), NOW + 10 * MS).accepted
    # Wrong digest, no MAC, crypto-NAK, then another trusted key: all refused.
    for i, (trailer, reason) in enumerate([
        (Mac(5, bytes(len(packet.mac.digest))).pack(), "auth"),
        (b"", "auth"),
        (b"\0\0\0\0", "crypto_nak"),
        (None, "auth"),
    ], start=1):
        now = NOW + i * 10**9
        req = peer.request(now)
        body = build_reply(req[:48], now + 5 * MS, SERVER, now + 5 * MS)
        if trailer is None:
            trailer = Authenticator(keys, trusted=[9]).signer(9)(body)
        assert peer.receive(body + trailer, now + 10 * MS).reason == reason
    assert peer.association.reach == 1


def test_key_auth_refuses_an_unknown_or_untrusted_key():
    keys = parse_keys("5 MD5 abc\n").keys
    with pytest.raises(ValueError, match="not in the keys file"):
        KeyAuth(Authenticator(keys, trusted=[5]), 6)
    with pytest.raises(ValueError, match="trustedkey"):
        KeyAuth(Authenticator(keys, trusted=[]), 5)


# -- bad input never crashes ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_any_datagram_is_counted_never_raises(data, symmetric):
    peer = make_peer(mode=MODE_ACTIVE if symmetric else MODE_CLIENT)
    request = peer.request(NOW)
    # Half the time, make the junk carry our origin so that it reaches the later tests.
    if len(data) >= 48 and data[0] & 1:
        data = data[:24] + request[40:48] + data[32:]
    result = peer.receive(data, NOW + MS)
    assert result.reason is None or result.reason in REASONS
    assert peer.stats.received == 1
    assert peer.stats.accepted + sum(peer.stats.dropped.values()) == 1
