"""Tests for stratum1/leapfile.py: parsing, the #h hash, expiry, fixtures of every kind."""

from __future__ import annotations

import os

import pytest

from stratum1.leapfile import LeapFileError, format_leapfile, load_leapfile, parse_leapfile
from stratum1.ntptime import NTP_UNIX_OFFSET_S

NS = 1_000_000_000
ENTRIES = [(2272060800, 10), (3644697600, 36), (3692217600, 37)]
UPDATED, EXPIRES = 3960835200, 3991593600  # 2025-07-07, 2026-06-28


def unix_ns(ntp: int) -> int:
    return (ntp - NTP_UNIX_OFFSET_S) * NS


def test_valid_file_with_hash() -> None:
    t = parse_leapfile(format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES))
    assert t.hash_verified
    assert [e.tai_offset for e in t.entries] == [10, 36, 37]
    assert t.tai_offset(unix_ns(3692217600)) == 37
    assert t.tai_offset(unix_ns(3692217600) - 1) == 36
    assert t.next_leap(unix_ns(3692217600) - 10 * NS) == (unix_ns(3692217600), 1)
    assert t.next_leap(unix_ns(3692217600)) is None


def test_spec_example_hash_words_without_leading_zeros() -> None:
    text = format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES)
    hline = [x for x in text.splitlines() if x.startswith("#h")][0]
    words = hline[2:].split()
    stripped = "#h " + " ".join(w.lstrip("0") or "0" for w in words)
    assert parse_leapfile(text.replace(hline, stripped)).hash_verified


def test_system_copy_verifies_if_present() -> None:
    path = "/usr/share/zoneinfo/leap-seconds.list"
    if not os.path.exists(path):
        pytest.skip("tzdata's leap-seconds.list is not installed")
    t = load_leapfile(path)
    assert t.hash_verified and t.entries[-1].tai_offset >= 37


def test_bad_hash_rejected() -> None:
    text = format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES)
    with pytest.raises(LeapFileError, match="signature mismatch"):
        parse_leapfile(text.replace("3692217600\t37", "3692217600\t38"))


def test_malformed_hash_rejected() -> None:
    text = format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES, with_hash=False)
    with pytest.raises(LeapFileError, match="malformed"):
        parse_leapfile(text + "#h 1234 zz\n")


def test_no_hash_accepted_unverified() -> None:
    t = parse_leapfile(format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES, with_hash=False))
    assert not t.hash_verified


def test_not_ascending_rejected_with_line() -> None:
    text = format_leapfile(
        [(3692217600, 37), (3644697600, 36)], updated=UPDATED, expires=EXPIRES, with_hash=False
    )
    with pytest.raises(LeapFileError, match=r"f:5: times not ascending"):
        parse_leapfile(text, "f")


@pytest.mark.parametrize("junk", ["", "#$ 1\n#@ 2\n", "3692217600\n", "36922x7600 37\n", "zzz\n"])
def test_truncated_or_junk_rejected(junk: str) -> None:
    with pytest.raises(LeapFileError):
        parse_leapfile(junk)


def test_expiry_messages() -> None:
    t = parse_leapfile(format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES))
    exp = unix_ns(EXPIRES)
    assert t.expiry_message(exp - 60 * 86400 * NS) is None
    level, msg = t.expiry_message(exp - 10 * 86400 * NS)
    assert level == "warning" and "expire in less than 10 days" in msg
    level, msg = t.expiry_message(exp + 147 * 86400 * NS)  # this machine's 2026-11-22
    assert level == "error" and "expired 147 days ago" in msg
    assert t.expired(exp) and not t.expired(exp - 1)


def test_load_from_disk(tmp_path) -> None:
    p = tmp_path / "leap-seconds.list"
    p.write_text(format_leapfile(ENTRIES, updated=UPDATED, expires=EXPIRES))
    assert load_leapfile(p).expires_ntp == EXPIRES
    p.write_bytes(b"\xff\xff")
    with pytest.raises(LeapFileError, match="ASCII"):
        load_leapfile(p)
