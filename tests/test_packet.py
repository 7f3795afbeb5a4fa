"""Tests for stratum1/packet.py: header fields, extension fields vs MACs, errors, fuzzing."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1.ntptime import ns_to_ntp64
from stratum1.packet import (
    CRYPTO_NAK,
    HEADER_LEN,
    MODE_CLIENT,
    ExtensionField,
    Mac,
    NtpPacket,
    PacketError,
    peek_mode,
    peek_version,
    timestamp_from_ns,
)

# A real ntpdig (NTPv4 client) request: LI 0, VN 4, mode 3, everything zero but the transmit.
NTPDIG_REQUEST = bytes.fromhex("23" + "00" * 39 + "ec5b7f2a12345678")


def header(lvm=0x23, stratum=0, poll=0, precision=0, rest=b"") -> bytes:
    return struct.pack("!BBbb", lvm, stratum, poll, precision) + bytes(44) + rest


def test_decodes_every_header_field():
    data = struct.pack(
        "!BBbbII4sQQQQ",
        (1 << 6) | (3 << 3) | 4,
        2,
        -6,
        -20,
        0x00010000,
        0x00008000,
        b"GPS\0",
        0x1111111122222222,
        0x3333333344444444,
        0x5555555566666666,
        0x7777777788888888,
    )
    p = NtpPacket.unpack(data)
    assert (p.leap, p.version, p.mode, p.stratum, p.poll, p.precision) == (1, 3, 4, 2, -6, -20)
    assert p.root_delay == 0x00010000 and p.root_delay_s == 1.0
    assert p.root_dispersion == 0x8000 and p.root_dispersion_s == 0.5
    assert p.refid == b"GPS\0" and p.refid_text == "GPS"
    assert p.reference == 0x1111111122222222
    assert p.origin == 0x3333333344444444
    assert p.receive == 0x5555555566666666
    assert p.transmit == 0x7777777788888888
    assert p.extensions == () and p.mac is None
    assert p.pack() == data


def test_real_client_request():
    p = NtpPacket.unpack(NTPDIG_REQUEST)
    assert (p.version, p.mode, p.transmit) == (4, MODE_CLIENT, 0xEC5B7F2A12345678)
    assert p.pack() == NTPDIG_REQUEST


def test_negative_root_delay_is_signed():
    p = NtpPacket(root_delay=0xFFFF0000)
    assert p.root_delay_s == -1.0


def test_timestamps_convert_to_ns_across_the_2036_rollover():
    t_2035 = 2_082_758_400 * 10**9  # 2036-01-01 is still era 0 ...
    t_2037 = 2_145_916_800 * 10**9  # ... 2038-01-01 is era 1: seconds field wrapped
    for t in (t_2035, t_2037, 1_767_225_600_123_456_789):
        p = NtpPacket(transmit=ns_to_ntp64(t))
        assert abs(p.transmit_ns(pivot_ns=t) - t) <= 1
    assert ns_to_ntp64(t_2037) >> 32 < ns_to_ntp64(t_2035) >> 32
    assert NtpPacket(transmit=ns_to_ntp64(t_2037)).transmit_ns(pivot_ns=t_2035) > t_2035


def test_timestamp_from_ns_keeps_zero_as_never():
    assert timestamp_from_ns(0) == 0
    assert timestamp_from_ns(1) != 0


def test_short_packet_and_bad_versions_rejected():
    with pytest.raises(PacketError, match="shorter"):
        NtpPacket.unpack(NTPDIG_REQUEST[:47])
    with pytest.raises(PacketError, match="shorter"):
        NtpPacket.unpack(b"")
    for version in (0, 5, 6, 7):
        with pytest.raises(PacketError, match="version"):
            NtpPacket.unpack(header(lvm=(version << 3) | 3))
    for version in (1, 2, 3, 4):
        assert NtpPacket.unpack(header(lvm=(version << 3) | 3)).version == version


def test_mode_6_and_7_are_not_time_packets():
    for mode in (6, 7):
        data = header(lvm=(2 << 3) | mode)
        assert peek_mode(data) == mode
        with pytest.raises(PacketError, match=f"mode {mode}"):
            NtpPacket.unpack(data)


def test_peek_helpers():
    assert peek_mode(b"") is None and peek_version(b"") is None
    assert peek_mode(b"\x23") == 3 and peek_version(b"\x23") == 4
    assert peek_mode(b"\x16\x02") == 6 and peek_version(b"\x16") == 2


@pytest.mark.parametrize("digest_len", [16, 20])
def test_mac_after_header(digest_len):
    digest = bytes(range(digest_len))
    data = NTPDIG_REQUEST + struct.pack("!I", 42) + digest
    p = NtpPacket.unpack(data)
    assert p.mac == Mac(42, digest) and not p.mac.is_crypto_nak
    assert p.extensions == ()
    assert p.pack() == data


def test_crypto_nak():
    p = NtpPacket.unpack(NTPDIG_REQUEST + CRYPTO_NAK)
    assert p.mac is not None and p.mac.is_crypto_nak and len(p.mac) == 4


def test_mac_in_older_versions():
    data = header(lvm=(3 << 3) | 3) + struct.pack("!I", 7) + bytes(16)
    assert NtpPacket.unpack(data).mac == Mac(7, bytes(16))


def test_extension_fields_then_mac():
    ef1 = ExtensionField.padded(0x0104, b"unique-id-32-bytes-long.........")
    ef2 = ExtensionField(0x0204, bytes(12))  # a 16-octet field is fine when a MAC follows
    mac = Mac(1, bytes(range(20)))
    p = NtpPacket(version=4, mode=MODE_CLIENT, extensions=(ef1, ef2), mac=mac)
    data = p.pack()
    assert len(data) == HEADER_LEN + len(ef1) + 16 + 24
    q = NtpPacket.unpack(data)
    assert q.extensions == (ef1, ef2) and q.mac == mac
    assert q == p


def test_last_extension_field_needs_28_octets_without_mac():
    short = ExtensionField(0x0001, bytes(12))
    with pytest.raises(PacketError, match="28 octets"):
        NtpPacket(extensions=(short,)).pack()
    # The same bytes on the wire are not a valid packet either (16 trailing bytes).
    with pytest.raises(PacketError):
        NtpPacket.unpack(NTPDIG_REQUEST + short.pack())
    # 20 or 24 octets after the header are read as a MAC (RFC 7822), whatever they hold.
    ef20 = ExtensionField(0x0001, bytes(16))
    assert NtpPacket.unpack(NTPDIG_REQUEST + ef20.pack()).mac is not None
    ef28 = ExtensionField.padded(0x0001, b"x", min_length=28)
    assert len(ef28) == 28
    assert NtpPacket.unpack(NtpPacket(extensions=(ef28,)).pack()).extensions == (ef28,)


def test_extension_field_before_crypto_nak_must_be_long_enough():
    with pytest.raises(PacketError):
        NtpPacket(extensions=(ExtensionField(1, bytes(12)),), mac=Mac(0)).pack()
    ok = NtpPacket(extensions=(ExtensionField(1, bytes(20)),), mac=Mac(0))
    assert NtpPacket.unpack(ok.pack()) == ok


def test_extension_fields_only_in_version_4():
    ef = ExtensionField.padded(1, b"", min_length=28)
    with pytest.raises(PacketError, match="version 4"):
        NtpPacket(version=3, extensions=(ef,)).pack()
    # On the wire a v3 packet's trailer can only be a MAC.
    with pytest.raises(PacketError, match="trailing"):
        NtpPacket.unpack(header(lvm=(3 << 3) | 3) + ef.pack())


@pytest.mark.parametrize(
    "trailer",
    [
        b"\0\0",  # 2 stray bytes
        bytes(8),  # neither EF nor MAC
        struct.pack("!HH", 1, 12) + bytes(24),  # EF length below 16
        struct.pack("!HH", 1, 30) + bytes(24),  # EF length not a multiple of 4
        struct.pack("!HH", 1, 64) + bytes(24),  # EF runs past the end
        struct.pack("!HH", 1, 28) + bytes(24) + bytes(8),  # EF then junk
    ],
)
def test_bad_trailers(trailer):
    with pytest.raises(PacketError):
        NtpPacket.unpack(NTPDIG_REQUEST + trailer)


def test_field_validation_when_packing():
    good = NtpPacket()
    assert len(good.pack()) == 48
    bad = [
        {"leap": 4},
        {"version": 0},
        {"version": 5},
        {"mode": 6},
        {"mode": 7},
        {"stratum": 256},
        {"poll": 128},
        {"precision": -129},
        {"root_delay": 1 << 32},
        {"root_dispersion": -1},
        {"refid": b"GPS"},
        {"transmit": 1 << 64},
        {"origin": -1},
    ]
    for fields in bad:
        with pytest.raises(PacketError):
            NtpPacket(**fields).pack()


def test_component_validation():
    with pytest.raises(PacketError):
        ExtensionField(1, bytes(11))  # 15 octets
    with pytest.raises(PacketError):
        ExtensionField(1, bytes(13))  # not a multiple of 4
    with pytest.raises(PacketError):
        ExtensionField(0x10000, bytes(12))
    with pytest.raises(PacketError):
        Mac(1, bytes(8))
    with pytest.raises(PacketError):
        Mac(1 << 32, bytes(16))
    with pytest.raises(PacketError):
        Mac.unpack(bytes(8))
    assert ExtensionField.padded(5, b"abc").pack() == struct.pack("!HH", 5, 16) + b"abc" + bytes(9)


def test_packet_error_is_a_value_error():
    assert issubclass(PacketError, ValueError)


# -- property tests ---------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
s8 = st.integers(-128, 127)
ext_fields = st.builds(
    ExtensionField,
    st.integers(0, 0xFFFF),
    st.integers(3, 40).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)
macs = st.one_of(
    st.none(),
    st.builds(Mac, u32, st.sampled_from([b"", bytes(16), bytes(range(20))])),
)


@st.composite
def packets(draw):
    version = draw(st.integers(1, 4))
    exts = tuple(draw(st.lists(ext_fields, max_size=3))) if version == 4 else ()
    return NtpPacket(
        leap=draw(st.integers(0, 3)),
        version=version,
        mode=draw(st.integers(0, 5)),
        stratum=draw(st.integers(0, 255)),
        poll=draw(s8),
        precision=draw(s8),
        root_delay=draw(u32),
        root_dispersion=draw(u32),
        refid=draw(st.binary(min_size=4, max_size=4)),
        reference=draw(u64),
        origin=draw(u64),
        receive=draw(u64),
        transmit=draw(u64),
        extensions=exts,
        mac=draw(macs),
    )


@settings(max_examples=400, deadline=None)
@given(packets())
def test_round_trip(packet):
    try:
        data = packet.pack()
    except PacketError:
        # Only layouts RFC 7822 cannot tell apart may be refused.
        assert packet.extensions
        return
    assert NtpPacket.unpack(data) == packet
    assert NtpPacket.unpack(data).pack() == data


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_packet_error(data):
    try:
        packet = NtpPacket.unpack(data)
    except PacketError:
        return
    assert packet.pack() == data  # whatever decodes re-encodes to the same bytes


@settings(max_examples=800, deadline=None)
@given(st.integers(0, 0xFF), st.binary(min_size=47, max_size=47), st.binary(max_size=120))
def test_fuzz_plausible_headers(first, rest, trailer):
    data = bytes([first]) + rest + trailer
    try:
        packet = NtpPacket.unpack(data)
    except PacketError:
        return
    assert packet.mode not in (6, 7)
    assert 1 <= packet.version <= 4
    assert packet.pack() == data
