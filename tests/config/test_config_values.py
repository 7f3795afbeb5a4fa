"""stratum1/config/values.py: numbers, addresses, masks."""

from __future__ import annotations

import socket

import pytest

from stratum1.config.values import (
    BadValue,
    is_hostname,
    parse_address,
    parse_float,
    parse_int,
    parse_mask,
    parse_refclock_address,
    prefix_to_mask,
)


def test_parse_int() -> None:
    assert parse_int("17", 0, 20) == 17
    assert parse_int("0x51", 0, 255) == 81
    assert parse_int("-1", -1, 1) == -1
    for bad in ("1.5", "", "x", "1e3", "0x"):
        with pytest.raises(BadValue, match="expects an integer"):
            parse_int(bad, 0, 10)
    with pytest.raises(BadValue, match="out of range 0..10"):
        parse_int("11", 0, 10)


def test_parse_float() -> None:
    assert parse_float("0.350", 0, 1) == 0.35
    assert parse_float(".5", 0, 1) == 0.5
    assert parse_float("-1e-3", -1, 1) == -0.001
    for bad in ("nan", "inf", "1,5", "", "0x1"):
        with pytest.raises(BadValue):
            parse_float(bad, -1e9, 1e9)
    with pytest.raises(BadValue, match="out of range"):
        parse_float("2", 0, 1)


def test_addresses() -> None:
    assert parse_address("192.0.2.1").family == socket.AF_INET
    assert parse_address("2001:DB8::1").text == "2001:db8::1"
    assert parse_address("[2001:db8::1]").kind == "ipv6"
    assert parse_address("fe80::1%eth0").text == "fe80::1%eth0"
    assert parse_address("127.127.20.1").refclock == (20, 1)
    assert parse_address("time.example.org").kind == "host"
    with pytest.raises(BadValue):
        parse_address("time.example.org", allow_host=False)
    for bad in ("1.2.3.4.5", "1.2.3.999", "fe80::1%", "192.0.2.1%eth0", "a..b", "-a.b", "a_b c"):
        with pytest.raises(BadValue):
            parse_address(bad)


def test_refclock_address() -> None:
    assert parse_refclock_address("127.127.1.0") == (1, 0)
    assert parse_refclock_address("127.0.0.1") is None
    with pytest.raises(BadValue):
        parse_refclock_address("127.127.256.0")


def test_hostnames() -> None:
    assert is_hostname("pool.ntp.org.") and is_hostname("a-b.c")
    assert not is_hostname("1.2.3") and not is_hostname("a" * 64 + ".org")
    assert not is_hostname("") and not is_hostname("a-.org")


def test_masks() -> None:
    assert parse_mask("255.255.255.0", socket.AF_INET) == "255.255.255.0"
    assert parse_mask("ffff:ffff::", socket.AF_INET6) == "ffff:ffff::"
    assert parse_mask("0.0.0.0", socket.AF_INET) == "0.0.0.0"
    with pytest.raises(BadValue, match="contiguous"):
        parse_mask("255.0.255.0", socket.AF_INET)
    assert prefix_to_mask(20, socket.AF_INET) == "255.255.240.0"
    assert prefix_to_mask(0, socket.AF_INET6) == "::"
