"""Tests of the pure NMEA decoder (drivers/nmea_decode.py): framing, checksums, validity, dates,
rollover, leap second, one sample per second, and fuzzing (nothing raises, garbage never
becomes a time)."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stratum1.drivers.nmea_decode import (
    DEFAULT_PIVOT_NS,
    MODE_DATE_TRUST,
    MODE_GGA,
    MODE_RMC,
    MODE_ZDA,
    ROLLOVER_S,
    BadDateError,
    BadTimeError,
    ChecksumError,
    FramingError,
    NmeaDecoder,
    NmeaFramer,
    advance_rollover,
    baud_from_mode,
    checksum,
    parse_time,
    split_sentence,
    timing_sentences,
)

NS = 1_000_000_000
PIVOT_2016 = calendar.timegm((2016, 1, 1, 0, 0, 0)) * NS


def utc(*t: int) -> int:
    return calendar.timegm((*t, 0, 0, 0)[:6] + (0, 0, 0)) * NS


def with_cs(body: str) -> bytes:
    """``$body*HH`` with a correct checksum."""
    return f"${body}*{checksum(body.encode()):02X}".encode()


# spec timecodes.md §4.7 bursts (checksums verified there)
BURST_F = b"""$GNRMC,120000.00,A,4807.03812,N,01131.00054,E,0.021,,150624,,,A*6A
$GNVTG,,T,,M,0.021,N,0.039,K,A*34
$GNGGA,120000.00,4807.03812,N,01131.00054,E,1,12,0.86,545.4,M,46.9,M,,*47
$GNGSA,A,3,02,05,12,13,18,20,25,29,,,,,1.47,0.86,1.19*18
$GNGSA,A,3,65,66,67,74,75,76,,,,,,,1.47,0.86,1.19*1B
$GPGSV,2,1,08,02,17,312,29,05,64,205,44,12,23,071,35,13,41,284,38*7D
$GPGSV,2,2,08,18,11,157,30,20,52,112,42,25,31,248,36,29,77,044,45*7D
$GLGSV,2,1,06,65,38,071,27,66,71,341,33,67,25,271,24,74,19,031,21*65
$GLGSV,2,2,06,75,56,088,30,76,33,160,26*63
$GNGLL,4807.03812,N,01131.00054,E,120000.00,A,A*74
"""
BURST_A = b"""$GPTXT,01,01,02,u-blox ag - www.u-blox.com*50
$GPTXT,01,01,02,ANTSTATUS=OK*3B
$GPRMC,,V,,,,,,,,,,N*53
$GPVTG,,,,,,,,,N*30
$GPGGA,,,,,,0,00,99.99,,,,,,*48
$GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99*30
$GPGSV,1,1,00*79
$GPGLL,,,,,,V,N*64
"""
BURST_B = b"""$GPRMC,061542.00,V,,,,,,,100324,,,N*7D
$GPVTG,,,,,,,,,N*30
$GPGGA,061542.00,,,,,0,00,99.99,,,,,,*62
$GPGLL,,,,,061542.00,V,N*4E
"""
RMC_C = b"$GPRMC,235959.00,A,5231.12345,N,01324.54321,E,0.012,,311216,,,A*75"
GLL_LEAP = b"$GPGLL,5231.12345,N,01324.54321,E,235960.00,A,A*63"
RMC_E = b"$GPRMC,000000.00,A,5231.12345,N,01324.54321,E,0.015,,010117,,,A*73"
ZDA = b"$GPZDA,120001.00,15,06,2024,00,00*62"
PUBX = b"$PUBX,04,120001.00,150624,561601.00,2318,18,-1146383,-3163.012,21*16"
PUBX_D = b"$PUBX,04,061542.00,100324,22542.00,2305,15D,1930035,-2660.664,43*4F"


def feed(decoder: NmeaDecoder, data: bytes, rx_ns: int | None = None) -> list:
    return [decoder.feed_line(f.data, rx_ns) for f in NmeaFramer().feed(data)]


# -- framing and checksums ----------------------------------------------------------------------
def test_split_sentence_fields_and_talker() -> None:
    s = split_sentence(b"$GNGGA,120000.00,4807.03812,N,01131.00054,E,1,12,0.86,545.4,M,46.9,M,,*47\r\n")
    assert (s.talker, s.kind, s.checksummed) == ("GN", "GGA", True)
    assert s.fields[0] == "120000.00" and s.fields[5] == "1" and s.fields[-1] == ""
    assert split_sentence(PUBX).kind == "PUBX04"


@pytest.mark.parametrize(
    "line, error",
    [
        (RMC_C.replace(b"5231", b"5232"), ChecksumError),  # flipped character, old checksum
        (b"$GPVTG,,T,,M,0.012,N,0.022,K,A*2d", ChecksumError),  # lower-case hex
        (b"$PUBX,04,061542.00,100324,22542.00,2305,15D,1930035,-2660.664,43,*3C", ChecksumError),
        (b"GPRMC,235959.00,A*00", FramingError),  # no '$'
        (b"$GPRMC,2359\x00\xff59.00,A", FramingError),  # NUL and 8-bit bytes
        (b"$gprmc,235959.00,A", FramingError),
        (b"$GPRMC,*7", FramingError),  # one checksum digit
        (with_cs("GPGGA," + "1," * 140), FramingError),  # over-long talker sentence
    ],
)
def test_bad_lines_raise_typed_errors(line: bytes, error: type) -> None:
    with pytest.raises(error):
        split_sentence(line)


def test_ublox_doc_example_with_trailing_comma_has_wrong_checksum() -> None:
    good = b"$PUBX,04,061542.00,100324,22542.00,2305,15D,1930035,-2660.664,43*4F"
    assert split_sentence(good).kind == "PUBX04"
    with pytest.raises(ChecksumError):
        split_sentence(good[:-3] + b",*3C")


def test_rmc_requires_checksum_and_others_once_seen() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    r = d.feed_line(RMC_C[:-3])
    assert r.outcome == "malformed" and isinstance(r.error, ChecksumError)
    # a GGA without checksum is fine until a checksummed GGA has been seen
    gga = b"$GPGGA,235959.00,5231.12345,N,01324.54321,E,1,08,1.01,34.5,M,39.8,M,,*64"
    assert d.feed_line(gga[:-3], utc(2016, 12, 31, 23, 59, 59)).outcome != "malformed"
    d.feed_line(gga, utc(2016, 12, 31, 23, 59, 59))
    assert d.feed_line(gga[:-3], utc(2016, 12, 31, 23, 59, 59)).outcome == "malformed"


def test_framer_resyncs_on_dollar_and_counts_noise() -> None:
    f = NmeaFramer()
    glued = RMC_C[:40] + RMC_E + b"\r\n"  # cut mid-field, next sentence glued on
    frames = f.feed(b"\x00\xb5\x62junk" + glued + b"$GPGSV,1,1,00*79\r\n")
    assert [fr.problem for fr in frames] == ["truncated", None, None]
    assert frames[1].data.rstrip(b"\r") == RMC_E
    assert f.noise_bytes == 7


def test_framer_splits_across_chunks_with_stream_indices() -> None:
    f = NmeaFramer()
    data = RMC_C + b"\r\n" + RMC_E + b"\r\n"
    frames = []
    for i in range(0, len(data), 7):
        frames += f.feed(data[i : i + 7])
    assert [fr.data.rstrip(b"\r") for fr in frames] == [RMC_C, RMC_E]
    assert frames[0].start == 0 and frames[0].end == len(RMC_C) + 1
    assert frames[1].start == len(RMC_C) + 2


def test_framer_drops_overlong_then_recovers() -> None:
    f = NmeaFramer(max_frame=100)
    frames = f.feed(b"$" + b"A" * 500 + b"\n" + RMC_C + b"\n")
    assert [fr.problem for fr in frames] == ["overlong", None]


# -- time and date fields -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["246000", "236160", "2359", "235959.1234567890", "23595a", ""])
def test_impossible_times(text: str) -> None:
    with pytest.raises(BadTimeError):
        parse_time(text)


def test_time_fractions() -> None:
    assert parse_time("132820.60") == (13, 28, 20, 600_000_000)
    assert parse_time("235960") == (23, 59, 60, 0)


@pytest.mark.parametrize("date", ["320124", "311324", "000000", "310224", "2208-1", "29022"])
def test_impossible_dates_are_malformed(date: str) -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    r = d.feed_line(with_cs(f"GPRMC,120000.00,A,5231.1,N,01324.5,E,0.0,,{date},,,A"))
    assert r.outcome == "malformed" and isinstance(r.error, BadDateError)
    assert d.counts["accepted"] == 0


def test_rmc_2_digit_year_pivot_and_feb_29() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    r = d.feed_line(with_cs("GPRMC,120000.00,A,5231.1,N,01324.5,E,0.0,,290224,,,A"))
    assert r.outcome == "accepted" and r.timecode.reference_ns == utc(2024, 2, 29, 12, 0, 0)


# -- bursts from the spec -----------------------------------------------------------------------
def test_neo_m8n_burst_one_sample_per_second() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    results = feed(d, BURST_F)
    accepted = [r for r in results if r.outcome == "accepted"]
    assert len(accepted) == 1
    assert accepted[0].sentence.kind == "RMC"
    assert accepted[0].timecode.reference_ns == utc(2024, 6, 15, 12, 0, 0)
    assert [r.outcome for r in results if r.sentence and r.sentence.kind in ("GGA", "GLL")] == [
        "filtered",
        "filtered",
    ]
    assert d.counts["filtered"] == 2
    s = d.status.as_dict()
    assert s["fix_type"] == 3 and s["satellites_in_view"] == 14 and s["satellites_used"] == 14


@pytest.mark.parametrize("burst", [BURST_A, BURST_B])
def test_no_fix_bursts_give_no_time(burst: bytes) -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    results = feed(d, burst, utc(2024, 3, 10, 6, 15, 42))
    assert not [r for r in results if r.outcome in ("accepted", "filtered")]
    assert d.counts["rejected"] >= 3
    assert d.status.antenna in (None, "OK")


def test_validity_rules() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    rx = utc(2024, 6, 15, 12, 0, 0)
    rmc_n = with_cs("GNRMC,120000.00,A,4807.0,N,01131.0,E,0.0,,150624,,,N")
    rmc_e = with_cs("GNRMC,120000.00,A,4807.0,N,01131.0,E,0.0,,150624,,,E")
    gga6 = with_cs("GNGGA,120000.00,4807.0,N,01131.0,E,6,12,0.86,545.4,M,46.9,M,,")
    gll_v = with_cs("GNGLL,4807.0,N,01131.0,E,120000.00,V,A")
    for line in (rmc_n, rmc_e, gga6, gll_v):
        assert d.feed_line(line, rx).outcome == "rejected", line
    # NMEA 4.1 navigational status "V" (u-blox: "not given") does not invalidate RMC
    nav_v = b"$GNRMC,120001.00,A,4807.03812,N,01131.00054,E,0.021,,150624,,,A,V*11"
    assert d.feed_line(nav_v, rx).outcome == "accepted"


def test_zda_trusted_only_without_an_invalid_fix() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    assert d.feed_line(ZDA).timecode.reference_ns == utc(2024, 6, 15, 12, 0, 1)
    d2 = NmeaDecoder(pivot_ns=PIVOT_2016)
    d2.feed_line(with_cs("GPGGA,,,,,,0,,,,M,,M,,"))
    assert d2.feed_line(ZDA).outcome == "rejected"


def test_pubx04_week_number_and_default_leap() -> None:
    # the full week number settles the date even with a pivot far in the future of 2024
    d = NmeaDecoder(pivot_ns=DEFAULT_PIVOT_NS)
    r = d.feed_line(PUBX)
    assert r.outcome == "accepted" and r.timecode.reference_ns == utc(2024, 6, 15, 12, 0, 1)
    assert r.timecode.rollover_weeks == 0
    # "15D": firmware default leap seconds, UTC unverified: no time until a good PUBX,04
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    assert d.feed_line(PUBX_D).outcome == "rejected"
    rmc = with_cs("GPRMC,061543.00,A,5231.1,N,01324.5,E,0.0,,100324,,,A")
    assert d.feed_line(rmc).outcome == "rejected"
    assert d.status.utc_leap_default is True
    d.feed_line(PUBX)
    assert d.status.utc_leap_default is False


def test_pubx04_week_disagreeing_with_date_is_bad() -> None:
    bad = with_cs("PUBX,04,120001.00,160624,561601.00,2318,18,-1146383,-3163.012,21")
    r = NmeaDecoder(pivot_ns=PIVOT_2016).feed_line(bad)
    assert r.outcome == "malformed" and isinstance(r.error, BadDateError)


# -- dates: anchoring, rollover, leap second ----------------------------------------------------
def test_dateless_sentences_take_the_held_date_across_midnight() -> None:
    d = NmeaDecoder(mode=MODE_GGA, pivot_ns=PIVOT_2016)
    rx = utc(2016, 12, 31, 23, 59, 59) + 300_000_000
    d.feed_line(RMC_C, rx)  # unselected but dated: anchors the day
    gga = with_cs("GPGGA,000000.00,5231.1,N,01324.5,E,1,08,1.01,34.4,M,39.8,M,,")
    r = d.feed_line(gga, rx + NS)
    assert r.outcome == "accepted"
    assert r.timecode.reference_ns == utc(2017, 1, 1, 0, 0, 0) and r.timecode.date_source == "held"


def test_dateless_sentences_fall_back_to_the_receive_clock() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    gga = with_cs("GPGGA,235959.00,5231.1,N,01324.5,E,1,08,1.01,34.4,M,39.8,M,,")
    r = d.feed_line(gga, utc(2017, 1, 1, 0, 0, 0) + 200_000_000)
    assert r.timecode.reference_ns == utc(2016, 12, 31, 23, 59, 59)
    assert r.timecode.date_source == "clock"
    assert NmeaDecoder().feed_line(gga, None).outcome == "rejected"  # nothing to anchor to


def test_week_rollover_is_corrected_forward() -> None:
    # a receiver whose firmware window has passed reports 2019-04-06 as 1999-08-21
    d = NmeaDecoder(pivot_ns=utc(2019, 1, 1, 0, 0, 0))
    r = d.feed_line(with_cs("GPRMC,235942.00,A,5231.1,N,01324.5,E,0.0,,210899,,,A"))
    assert r.outcome == "accepted"
    assert r.timecode.reference_ns == utc(1999, 8, 21, 23, 59, 42) + ROLLOVER_S * NS
    assert r.timecode.reference_ns == utc(2019, 4, 6, 23, 59, 42)
    assert r.timecode.rollover_weeks == 1024 and d.counts["rollover_corrected"] == 1
    # date trust (mode 0x40000) keeps the receiver's date
    d = NmeaDecoder(mode=MODE_DATE_TRUST, pivot_ns=utc(2019, 1, 1, 0, 0, 0))
    r = d.feed_line(with_cs("GPRMC,235942.00,A,5231.1,N,01324.5,E,0.0,,210899,,,A"))
    assert r.timecode.reference_ns == utc(1999, 8, 21, 23, 59, 42)


def test_rollover_rejects_dates_beyond_one_epoch() -> None:
    assert advance_rollover(0, 0) == (0, 0)
    with pytest.raises(BadDateError):
        advance_rollover(2 * ROLLOVER_S, 0)


def test_leap_second_at_month_end_is_decoded_but_not_used() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    assert d.feed_line(RMC_C).outcome == "accepted"
    r = d.feed_line(GLL_LEAP, utc(2016, 12, 31, 23, 59, 59) + NS)
    assert r.outcome == "leap" and r.timecode.leap_second
    r = d.feed_line(RMC_E, utc(2017, 1, 1, 0, 0, 0) + NS)
    assert r.outcome == "accepted" and r.timecode.reference_ns == utc(2017, 1, 1, 0, 0, 0)
    assert d.counts["leap_second"] == 1


def test_second_60_elsewhere_is_bad_time() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    r = d.feed_line(with_cs("GPRMC,235960.00,A,5231.1,N,01324.5,E,0.0,,301216,,,A"))
    assert r.outcome == "malformed" and isinstance(r.error, BadTimeError)
    r = d.feed_line(with_cs("GPRMC,125960.00,A,5231.1,N,01324.5,E,0.0,,311216,,,A"))
    assert r.outcome == "malformed"


def test_time_going_backwards_is_rejected() -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    d.feed_line(RMC_E)
    r = d.feed_line(RMC_C)
    assert r.outcome == "rejected" and d.counts["backwards"] == 1
    d.reset_sequence()
    assert d.feed_line(RMC_C).outcome == "accepted"


# -- mode bits ----------------------------------------------------------------------------------
def test_mode_speed_and_sentence_selection() -> None:
    assert [baud_from_mode(m << 4) for m in range(8)] == [
        4800, 9600, 19200, 38400, 57600, 115200, 4800, 4800,
    ]
    assert timing_sentences(0) == {"RMC", "GGA", "GLL", "ZDA", "PUBX04"}
    assert timing_sentences(MODE_RMC | 0x50) == {"RMC"}
    assert timing_sentences(MODE_ZDA | 0x200) == {"ZDA", "PUBX04"}


def test_unselected_sentences_are_ignored() -> None:
    d = NmeaDecoder(mode=MODE_ZDA, pivot_ns=PIVOT_2016)
    results = feed(d, BURST_F + ZDA + b"\n", utc(2024, 6, 15, 12, 0, 0))
    assert [r.sentence.kind for r in results if r.outcome == "accepted"] == ["ZDA"]
    assert d.counts["unselected"] == 3


# -- fuzz ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2**62))
def test_random_bytes_never_raise_and_never_give_time(data: bytes, rx: int) -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    for frame in NmeaFramer().feed(data):
        r = d.feed_line(frame.data, rx) if frame.problem is None else d.feed_bad_frame(frame)
        assert r.outcome in ("malformed", "ignored", "rejected")


_NMEA_CHARS = st.sampled_from(list("0123456789,.*$AVNEWSGPRMCZDLXU-D\r\n"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_NMEA_CHARS, max_size=120).map("".join), st.booleans())
def test_nmea_like_text_never_raises(text: str, fix_cs: bool) -> None:
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    body = "GPRMC," + text.replace("$", "").replace("*", "").replace("\r", "").replace("\n", "")
    line = with_cs(body) if fix_cs else ("$" + text).encode()
    r = d.feed_line(line, utc(2024, 1, 1, 0, 0, 0))
    if r.outcome == "accepted":  # only a syntactically complete, valid RMC may give time
        assert r.sentence.kind == "RMC" and r.sentence.fields[1] == "A"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(BURST_F) - 1), st.integers(0, 255))
def test_one_corrupted_byte_never_gives_a_wrong_second(pos: int, value: int) -> None:
    data = bytearray(BURST_F)
    data[pos] = value
    d = NmeaDecoder(pivot_ns=PIVOT_2016)
    for r in feed(d, bytes(data), utc(2024, 6, 15, 12, 0, 0)):
        if r.outcome == "accepted":
            # the checksum guards time fields: any accepted time is the true one
            assert r.timecode.second == utc(2024, 6, 15, 12, 0, 0) // NS
