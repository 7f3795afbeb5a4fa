"""Tests for stratum1/control.py: the mode-6 codec, status words, variable lists, dispatcher."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1.control import (
    ERR_BADASSOC,
    ERR_BADFMT,
    ERR_BADOP,
    ERR_PERMISSION,
    ERR_UNKNOWNVAR,
    ERR_UNSPEC,
    MAX_DATA,
    OP_CONFIGURE,
    OP_READ_MRU,
    OP_READCLOCK,
    OP_READSTAT,
    OP_READVAR,
    OP_REQ_NONCE,
    OP_SETTRAP,
    OP_UNSPEC,
    OP_WRITEVAR,
    Control,
    ControlError,
    ControlRequest,
    IgnoredRequest,
    Variables,
    clock_status,
    encode_error,
    encode_response,
    format_items,
    parse_request,
    parse_varlist,
    peer_status,
    system_status,
)

ADDR = ("127.0.0.40", 40123)


def request(opcode: int, assoc_id: int = 0, payload: bytes = b"", *, seq: int = 7,
            version: int = 2, flags: int = 0, offset: int = 0, count: int | None = None,
            mac: bytes = b"") -> bytes:
    """A mode-6 request as ntpq builds it (payload padded to 4, or to 8 before a MAC)."""
    n = len(payload) if count is None else count
    data = struct.pack("!BBHHHHH", (version << 3) | 6, flags | opcode, seq, 0, assoc_id,
                       offset, n) + payload
    data += bytes(-len(data) % (8 if mac else 4))
    return data + mac


def header(packet: bytes) -> dict[str, int]:
    lvm, rem_op, seq, status, assoc, offset, count = struct.unpack_from("!BBHHHHH", packet)
    return {"li": lvm >> 6, "vn": (lvm >> 3) & 7, "mode": lvm & 7, "r": rem_op >> 7,
            "e": (rem_op >> 6) & 1, "m": (rem_op >> 5) & 1, "op": rem_op & 0x1F, "seq": seq,
            "status": status, "assoc": assoc, "offset": offset, "count": count}


def reassemble(fragments: list[bytes]) -> tuple[int, bytes]:
    """What ntpq does with the fragments: checks each, orders by offset, no holes."""
    parts = []
    status = None
    for frag in fragments:
        h = header(frag)
        assert len(frag) % 4 == 0 and len(frag) >= 12 + h["count"]
        assert h["r"] == 1 and h["e"] == 0 and h["mode"] == 6
        assert h["m"] == 0 or h["count"] > 0
        parts.append((h["offset"], frag[12:12 + h["count"]], h["m"]))
        if not h["m"]:
            status = h["status"]
    parts.sort()
    data = b""
    for offset, chunk, _more in parts:
        assert offset == len(data), "hole or overlap in the fragments"
        data += chunk
    assert parts[-1][2] == 0 and sum(p[2] == 0 for p in parts) == 1
    assert status is not None
    return status, data


def parse_text(data: bytes) -> dict[str, str]:
    out = {}
    for item in parse_varlist(data.replace(b"\r\n", b"")):
        out[item[0]] = item[1]
    return out


# -- status words ---------------------------------------------------------------------------------


def test_status_words_match_ntpd_examples():
    assert system_status(0, 6, 1, 5) == 0x0615  # leap_none, sync_ntp, 1 event, clock_sync
    assert system_status(3, 0, 1, 6) == 0xC016  # leap_alarm, sync_unspec, restart
    assert peer_status(0x90, 6, 1, 0xA) == 0x961A  # conf, reach, sys.peer, sys_peer
    assert peer_status(0x90, 7, 1, 0xA) == 0x971A  # a PPS peer
    assert clock_status(0, 1, 3) == 0x0013


def test_status_event_counts_saturate_at_15():
    assert system_status(0, 4, 99, 5) & 0xF0 == 0xF0
    assert peer_status(0x80, 0, 40, 1) & 0xF0 == 0xF0


# -- requests -------------------------------------------------------------------------------------


def test_parse_request_fields():
    req = parse_request(request(OP_READVAR, 3, b"stratum,refid", seq=513))
    assert (req.version, req.opcode, req.sequence, req.assoc_id) == (2, OP_READVAR, 513, 3)
    assert req.payload == b"stratum,refid"
    assert not req.authenticated


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16\x02\x00",
        request(OP_READVAR, flags=0x80),  # a response
        request(OP_READVAR, flags=0x20),  # a fragment
        request(OP_READVAR, offset=4),
        request(OP_READVAR, version=0),
        request(OP_READVAR, version=5),
        bytes([(2 << 3) | 3]) + bytes(47),  # mode 3, not mode 6
    ],
)
def test_parse_request_ignores_what_ntpd_ignores(data):
    with pytest.raises(IgnoredRequest):
        parse_request(data)


@pytest.mark.parametrize(
    "data",
    [
        request(OP_READVAR, payload=b"abcd") + b"x",  # length not a multiple of 4
        request(OP_READVAR, payload=b"abcd", count=40),  # count beyond the data
    ],
)
def test_parse_request_bad_format(data):
    with pytest.raises(ControlError) as err:
        parse_request(data)
    assert err.value.code == ERR_BADFMT


def test_parse_request_finds_mac_after_payload_padded_to_8():
    mac = struct.pack("!I", 5) + bytes(range(16))
    data = request(OP_CONFIGURE, payload=b"restrict 10.0.0.1 nomodify", mac=mac)
    req = parse_request(data)
    assert req.mac == mac
    assert req.covered == data[: len(data) - len(mac)]
    assert len(req.covered) % 8 == 0
    assert req.payload == b"restrict 10.0.0.1 nomodify"


# -- responses ------------------------------------------------------------------------------------


def _req(opcode=OP_READVAR, assoc=9, seq=300, version=2) -> ControlRequest:
    return ControlRequest(version, opcode, seq, 0, assoc, b"")


def test_single_fragment_response_header():
    [frag] = encode_response(_req(), 1, 0x0615, b"stratum=1\r\n")
    h = header(frag)
    assert h == {"li": 1, "vn": 2, "mode": 6, "r": 1, "e": 0, "m": 0, "op": OP_READVAR,
                 "seq": 300, "status": 0x0615, "assoc": 9, "offset": 0, "count": 11}
    assert len(frag) == 24 and frag[23] == 0


def test_long_response_is_fragmented_with_more_bit_offset_and_count():
    payload = bytes(range(256)) * 4  # 1024 bytes
    frags = encode_response(_req(), 0, 0x1234, payload)
    assert len(frags) == 3
    heads = [header(f) for f in frags]
    assert [h["offset"] for h in heads] == [0, MAX_DATA, 2 * MAX_DATA]
    assert [h["count"] for h in heads] == [MAX_DATA, MAX_DATA, 1024 - 2 * MAX_DATA]
    assert [h["m"] for h in heads] == [1, 1, 0]
    assert {h["seq"] for h in heads} == {300} and {h["status"] for h in heads} == {0x1234}
    assert all(len(f) <= 12 + MAX_DATA for f in frags)
    assert reassemble(list(reversed(frags))) == (0x1234, payload)


def test_empty_response_is_one_fragment_with_count_zero():
    [frag] = encode_response(_req(), 0, 0, b"")
    assert header(frag)["count"] == 0 and len(frag) == 12


def test_signed_response_pads_to_8_and_appends_mac():
    [frag] = encode_response(_req(), 0, 0, b"Config Succeeded", sign=lambda b: b"K" * 20)
    assert frag.endswith(b"K" * 20)
    assert (len(frag) - 20) % 8 == 0


def test_error_response():
    frag = encode_error(_req(OP_READCLOCK, assoc=4), 3, ERR_BADASSOC)
    h = header(frag)
    assert (h["r"], h["e"], h["m"], h["op"]) == (1, 1, 0, OP_READCLOCK)
    assert h["status"] >> 8 == ERR_BADASSOC and h["count"] == 0 and h["assoc"] == 4
    assert h["li"] == 3 and len(frag) == 12


# -- variable lists -------------------------------------------------------------------------------


def test_format_items_breaks_lines_before_72_characters():
    items = [(f"name{i}", "x" * (i % 13)) for i in range(40)] + [("flag", None)]
    text = format_items(items).decode()
    assert text.endswith("flag\r\n")
    lines = text.split("\r\n")[:-1]
    assert len(lines) > 3
    assert all(len(line) < 72 for line in lines)
    assert all(line.endswith(",") for line in lines[:-1])
    assert parse_text(text.encode()) == {n: v for n, v in items}


def test_format_items_empty():
    assert format_items([]) == b""


def test_parse_varlist():
    assert parse_varlist(b"stratum, refid ,,leap=1\0\0") == [
        ("stratum", None), ("refid", None), ("leap", "1")]
    assert parse_varlist(b'timecode="$GPRMC,1,2",poll') == [
        ("timecode", '"$GPRMC,1,2"'), ("poll", None)]
    assert parse_varlist(b"") == []


def test_parse_varlist_rejects_binary():
    with pytest.raises(ControlError) as err:
        parse_varlist(b"stra\x01tum")
    assert err.value.code == ERR_BADFMT


def test_variables_select():
    v = Variables((("a", "1"), ("b", "2")), (("x", "9"),))
    assert v.select([]) == [("a", "1"), ("b", "2")]
    assert v.select(["x", "a"]) == [("x", "9"), ("a", "1")]
    with pytest.raises(ControlError) as err:
        v.select(["nope"])
    assert err.value.code == ERR_UNKNOWNVAR


# -- the dispatcher -------------------------------------------------------------------------------


class FakeView:
    def __init__(self) -> None:
        self.sys = Variables((("version", '"test"'), ("stratum", "1"), ("refid", "GPS")),
                             (("rootdist", "1.000"),))
        long = tuple((f"var{i:02d}", "0.123456") for i in range(60))
        self.peers = {
            2: (0x961A, Variables((("srcadr", "127.127.20.0"), ("refid", "GPS")) + long)),
            1: (0x9014, Variables((("srcadr", "127.127.22.0"), ("refid", "PPS")))),
        }
        self.fail = False

    def leap(self) -> int:
        return 0

    def system_status(self) -> int:
        if self.fail:
            raise RuntimeError("boom")
        return 0x0415

    def system_variables(self) -> Variables:
        return self.sys

    def association_status(self) -> list[tuple[int, int]]:
        return [(a, s) for a, (s, _v) in self.peers.items()]

    def peer(self, assoc_id):
        return self.peers.get(assoc_id)

    def clock(self, assoc_id):
        if assoc_id not in (0, 2):
            return None
        return 0x0003, Variables((("timecode", '"$GPRMC,x"'), ("poll", "5")))


def ask(control: Control, data: bytes) -> tuple[int, bytes]:
    return reassemble(control.respond(data, ADDR))


def error_of(control: Control, data: bytes) -> int:
    [frag] = control.respond(data, ADDR)
    h = header(frag)
    assert h["e"] == 1
    return h["status"] >> 8


def test_readstat_lists_associations_sorted():
    status, body = ask(Control(FakeView()), request(OP_READSTAT))
    assert status == 0x0415
    assert [struct.unpack_from("!HH", body, i) for i in range(0, len(body), 4)] == [
        (1, 0x9014), (2, 0x961A)]


def test_readstat_of_one_association():
    status, body = ask(Control(FakeView()), request(OP_READSTAT, 1))
    assert status == 0x9014 and b"srcadr=127.127.22.0" in body


def test_readvar_system_defaults_and_names():
    control = Control(FakeView())
    status, body = ask(control, request(OP_READVAR))
    assert status == 0x0415
    assert parse_text(body) == {"version": '"test"', "stratum": "1", "refid": "GPS"}
    _status, body = ask(control, request(OP_READVAR, payload=b"refid,rootdist"))
    assert body == b"refid=GPS, rootdist=1.000\r\n"


def test_readvar_peer_is_fragmented_and_reassembles():
    control = Control(FakeView(), max_data=100)
    frags = control.respond(request(OP_READVAR, 2), ADDR)
    assert len(frags) > 5
    status, body = reassemble(frags)
    assert status == 0x961A
    assert parse_text(body)["var59"] == "0.123456"
    assert control.handle(request(OP_READVAR, 2), ADDR) == frags
    assert isinstance(control.handle(request(OP_READVAR, 1), ADDR), bytes)


def test_errors():
    control = Control(FakeView())
    assert error_of(control, request(OP_READVAR, payload=b"nosuchvar")) == ERR_UNKNOWNVAR
    assert error_of(control, request(OP_READVAR, 77)) == ERR_BADASSOC
    assert error_of(control, request(OP_READCLOCK, 1)) == ERR_BADASSOC
    assert error_of(control, request(OP_SETTRAP)) == ERR_BADOP
    assert error_of(control, request(OP_REQ_NONCE)) == ERR_BADOP  # no MRU list wired
    assert error_of(control, request(OP_READ_MRU)) == ERR_BADOP
    assert error_of(control, request(OP_WRITEVAR, payload=b"leap=1")) == ERR_PERMISSION
    assert error_of(control, request(OP_CONFIGURE, payload=b"tos maxclock 5")) == ERR_PERMISSION
    assert error_of(control, request(OP_READVAR, payload=b"ab", count=30)) == ERR_BADFMT
    assert control.stats.errors[ERR_BADASSOC] == 2


def test_error_echoes_sequence_and_opcode():
    [frag] = Control(FakeView()).respond(request(OP_READVAR, 77, seq=4242), ADDR)
    h = header(frag)
    assert (h["seq"], h["op"], h["assoc"], h["vn"]) == (4242, OP_READVAR, 77, 2)


def test_readclock():
    control = Control(FakeView())
    status, body = ask(control, request(OP_READCLOCK, 2))
    assert status == 0x0003 and b'timecode="$GPRMC,x"' in body
    assert ask(control, request(OP_READCLOCK, 0, b"poll"))[1] == b"poll=5\r\n"


def test_unspec_opcode_answers_status_only():
    control = Control(FakeView())
    assert ask(control, request(OP_UNSPEC)) == (0x0415, b"")
    assert ask(control, request(OP_UNSPEC, 2)) == (0x961A, b"")


def test_noquery_hosts_get_nothing():
    control = Control(FakeView(), may_query=lambda addr: addr[0] != ADDR[0])
    assert control.respond(request(OP_READVAR), ADDR) == []
    assert control.handle(request(OP_READVAR), ADDR) is None
    assert control.stats.denied == 2
    assert control.respond(request(OP_READVAR), ("127.0.0.41", 1))


def test_ignored_datagrams_get_nothing():
    control = Control(FakeView())
    assert control.respond(request(OP_READVAR, flags=0x80), ADDR) == []
    assert control.respond(b"\x16", ADDR) == []
    assert control.stats.ignored == 2


def test_a_failing_view_answers_unspec_error():
    view = FakeView()
    view.fail = True
    assert error_of(Control(view), request(OP_READSTAT)) == ERR_UNSPEC


def test_configure_needs_the_control_key():
    applied = []

    def authenticate(covered: bytes, mac: bytes):
        return (lambda reply: b"\0\0\0\x05" + b"S" * 16) if mac[:4] == b"\0\0\0\x05" else None

    def configure(text: str, address) -> str:
        if "bogus" in text:
            raise ValueError("line 1: unknown directive 'bogus'")
        applied.append(text)
        return "Config Succeeded"

    control = Control(FakeView(), authenticate=authenticate, configure=configure)
    good_mac = b"\0\0\0\x05" + bytes(16)
    bad_mac = b"\0\0\0\x06" + bytes(16)
    assert error_of(control, request(OP_CONFIGURE, payload=b"tos maxclock 5")) == ERR_PERMISSION
    assert error_of(control, request(OP_CONFIGURE, payload=b"tos maxclock 5",
                                     mac=bad_mac)) == ERR_PERMISSION
    [frag] = control.respond(request(OP_CONFIGURE, payload=b"tos maxclock 5", mac=good_mac),
                             ADDR)
    assert frag[12:12 + header(frag)["count"]] == b"Config Succeeded"
    assert frag.endswith(b"S" * 16)
    assert applied == ["tos maxclock 5"]
    [frag] = control.respond(request(OP_CONFIGURE, payload=b"bogus", mac=good_mac), ADDR)
    assert b"unknown directive" in frag


class FakeMru:
    def nonce(self, address):
        return b"nonce=abcdef"

    def read_mru(self, payload, address, max_bytes):
        assert max_bytes >= MAX_DATA
        return b"addr.0=1.2.3.4:123, now=0x0.0\r\n"


def test_mru_opcodes_go_to_the_mru_responder():
    control = Control(FakeView(), mru=FakeMru())
    assert ask(control, request(OP_REQ_NONCE))[1] == b"nonce=abcdef"
    assert ask(control, request(OP_READ_MRU, payload=b"nonce=abcdef"))[1].startswith(b"addr.0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_respond_never_raises_on_junk(data):
    replies = Control(FakeView()).respond(data, ADDR)
    for frag in replies:
        assert len(frag) % 4 == 0 and frag[0] & 7 == 6 and frag[1] & 0x80


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([OP_READSTAT, OP_READVAR, OP_READCLOCK, OP_UNSPEC]),
       st.integers(0, 3), st.binary(max_size=80), st.integers(0, 0xFFFF))
def test_respond_to_any_request_echoes_sequence(op, assoc, payload, seq):
    for frag in Control(FakeView()).respond(request(op, assoc, payload, seq=seq), ADDR):
        h = header(frag)
        assert (h["seq"], h["op"], h["assoc"]) == (seq, op, assoc)
