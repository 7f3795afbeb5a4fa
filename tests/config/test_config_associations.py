"""stratum1/config/associations.py and refclocks.py: association lines, refclock/fudge merging
and driver validation against the (stand-in) registry."""

from __future__ import annotations

import socket

import pytest

from stratum1.config.model import AssociationConfig, RefclockConfig
from stratum1.config.parser import parse_text


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_text(text, "t.conf")


def errors(text: str) -> list[str]:
    return [str(d) for d in parse(text)[1] if d.is_error]


def one_assoc(text: str) -> AssociationConfig:
    config, diags = parse(text)
    assert [d for d in diags if d.is_error] == []
    (a,) = config.associations
    return a


def one_refclock(text: str) -> RefclockConfig:
    config, diags = parse(text)
    assert [d for d in diags if d.is_error] == [], diags
    (rc,) = config.refclocks
    return rc


@pytest.mark.parametrize("kind", ["server", "peer", "pool"])
def test_association_defaults(kind: str) -> None:
    a = one_assoc(f"{kind} ntp.example.org\n")
    assert (a.kind, a.host, a.family) == (kind, "ntp.example.org", None)
    assert (a.minpoll, a.maxpoll, a.version, a.key, a.ttl, a.mode) == (6, 10, 4, None, None, None)
    assert not any((a.iburst, a.burst, a.prefer, a.noselect, a.true, a.xleave, a.preempt))
    assert str(a.location) == "t.conf:1"


def test_key_needs_a_keys_file_and_should_be_trusted() -> None:
    assert errors("server a.example.org key 5\n") == [
        "t.conf:1: server: key 5 is used but no keys file is configured"]
    _, diags = parse("keys /k\nserver a.example.org key 5\n")
    assert [str(d) for d in diags] == [
        "t.conf:2: warning: server: key 5 is not listed in trustedkey"]


def test_all_association_options() -> None:
    a = one_assoc("keys /etc/ntp.keys\ntrustedkey 7\n"
                  "server -6 ntp.example.org iburst burst prefer noselect true xleave preempt "
                  "minpoll 4 maxpoll 8 version 3 key 7 ttl 5 mode 2\n")
    assert a.family == socket.AF_INET6
    assert all((a.iburst, a.burst, a.prefer, a.noselect, a.true, a.xleave, a.preempt))
    assert (a.minpoll, a.maxpoll, a.version, a.key, a.ttl, a.mode) == (4, 8, 3, 7, 5, 2)


@pytest.mark.parametrize("host,family", [
    ("192.0.2.1", socket.AF_INET), ("2001:db8::1", socket.AF_INET6),
    ("fe80::1%eth0", socket.AF_INET6), ("ntp.example.org.", None), ("time_a.lan", None),
])
def test_hosts_and_addresses(host: str, family: int | None) -> None:
    assert one_assoc(f"server {host}\n").family == family


@pytest.mark.parametrize("line,fragment", [
    ("server 1.2.3.256", "not a valid IPv4 address"),
    ("server 1.2.3", "not a valid IPv4 address"),
    ("server 2001:db8::g", "not a valid IPv6 address"),
    ("server -bad-.example", "not a valid host name"),
    ("server -4 2001:db8::1", "not an IPv4 address"),
    ("server -6 192.0.2.1", "not an IPv6 address"),
    ("broadcast ntp.example.org", "not a valid IP address"),
    ("manycastclient 192.0.2.1", "not a multicast address"),
    ("server a.example.org minpoll 18", "out of range 3..17"),
    ("server a.example.org maxpoll 2", "out of range 3..17"),
    ("server a.example.org minpoll 10 maxpoll 8", "minpoll 10 is greater than maxpoll 8"),
    ("server a.example.org version 0", "out of range 1..4"),
    ("server a.example.org key 0", "out of range 1..65535"),
    ("server a.example.org ttl 256", "out of range 0..255"),
    ("server a.example.org minpoll four", "expects an integer, not 'four'"),
    ("server a.example.org key", "key needs a value"),
    ("server a.example.org burts", "unknown option 'burts' (did you mean 'burst'?)"),
    ("server a.example.org autokey", "Autokey is not supported"),
    ("peer 127.127.20.0", "can only be configured with server or refclock"),
])
def test_association_errors_name_file_line_directive(line: str, fragment: str) -> None:
    msgs = errors(line + "\n")
    assert len(msgs) == 1, msgs
    directive = line.split()[0]
    assert msgs[0].startswith(f"t.conf:1: {directive}: ")
    assert fragment in msgs[0]


def test_lone_minpoll_above_default_maxpoll_raises_maxpoll_like_ntpd() -> None:
    a = one_assoc("server a.example.org minpoll 12\n")
    assert (a.minpoll, a.maxpoll) == (12, 12)
    a = one_assoc("server a.example.org maxpoll 4\n")
    assert (a.minpoll, a.maxpoll) == (4, 4)


def test_broadcast_manycast_and_pool() -> None:
    config, diags = parse("broadcast 192.168.1.255 key 1 ttl 2\nmanycastclient 239.1.1.1 key 3\n"
                          "pool pool.ntp.org iburst\n")
    assert [a.kind for a in config.associations] == ["broadcast", "manycastclient", "pool"]
    assert config.associations[0].ttl == 2


def test_duplicate_association_is_a_warning() -> None:
    _, diags = parse("server a.example.org\nserver A.example.org\n")
    assert [d.severity for d in diags] == ["warning"]


# --- refclocks -----------------------------------------------------------------------------------

def test_classic_server_and_fudge_equal_ntpsec_refclock() -> None:
    classic = one_refclock("server 127.127.20.0 mode 17 minpoll 4 maxpoll 4 prefer\n"
                           "fudge 127.127.20.0 time1 0.0 time2 0.35 flag1 1 flag3 1 refid GPS "
                           "stratum 0\n")
    ntpsec = one_refclock("refclock nmea unit 0 mode 17 minpoll 4 maxpoll 4 prefer time1 0.0 "
                          "time2 0.35 flag1 1 flag3 1 refid GPS stratum 0\n")
    assert classic.location is not None and ntpsec.location is not None
    assert classic == ntpsec  # both located at t.conf:1
    assert (classic.type, classic.unit, classic.driver, classic.address) == (
        20, 0, "nmea", "127.127.20.0")
    assert (classic.mode, classic.time2, classic.flag1, classic.flag2, classic.flag3) == (
        17, 0.35, True, None, True)


def test_fudge_may_come_before_its_server_line() -> None:
    rc = one_refclock("fudge 127.127.22.0 flag3 1 time1 0.000002\nserver 127.127.22.0\n")
    assert rc.flag3 is True and rc.time1 == 2e-6
    assert rc.location is not None and rc.location.line == 2


def test_fudge_overrides_refclock_line_values() -> None:
    rc = one_refclock("refclock shm unit 0 time1 0.1 refid GPS\nfudge 127.127.28.0 time1 0.2\n")
    assert (rc.time1, rc.refid) == (0.2, "GPS")


def test_fudge_without_refclock_is_an_error() -> None:
    assert errors("fudge 127.127.28.0 refid GPS\n") == [
        "t.conf:1: fudge: 127.127.28.0 has no server or refclock line"]


def test_ntpsec_flags_may_be_bare() -> None:
    rc = one_refclock("refclock pps flag3 flag4 0 flag2\n")
    assert (rc.flag2, rc.flag3, rc.flag4) == (True, True, False)


def test_refclock_options_path_ppspath_baud_subtype() -> None:
    rc = one_refclock("refclock nmea unit 1 path /dev/ttyAMA0 ppspath /dev/pps1 baud 115200 "
                      "noselect iburst true minjitter 0.001\n")
    assert (rc.unit, rc.path, rc.ppspath, rc.baud) == (1, "/dev/ttyAMA0", "/dev/pps1", 115200)
    assert rc.noselect and rc.iburst and rc.true and rc.minjitter == 0.001
    assert "nonstandard" not in errors("refclock nmea baud 9600\n")
    assert "not a standard serial speed" in errors("refclock nmea baud 9601\n")[0]


def test_refclock_unit_defaults_to_zero_and_registry_names_are_case_insensitive() -> None:
    rc = one_refclock("refclock NMEA\n")
    assert (rc.type, rc.unit) == (20, 0)


@pytest.mark.parametrize("text,fragment", [
    ("server 127.127.22.0 mode 1", "mode does not apply to driver pps (127.127.22.0)"),
    ("refclock pps time2 0.1", "time2 does not apply to driver pps"),
    ("refclock pps flag1 1", "flag1 does not apply to driver pps"),
    ("refclock pps baud 9600", "baud does not apply to driver pps"),
    ("refclock shm mode 2", "mode 2 is out of range 0..1 for driver shm"),
    ("refclock nmea unit 4", "unit 4 is out of range 0..3 for driver nmea"),
    ("refclock gnss", "unknown refclock driver 'gnss'"),
    ("server 127.127.99.0", "unknown refclock driver type 99"),
    ("server 127.127.6.0", "driver not available: type 6 (IRIG audio decoder"),
    ("server 127.127.29.0", "Trimble"),
    ("refclock trimble", "driver not available"),
    ("refclock generic", "is not installed"),
    ("server 127.127.300.0", "not a valid refclock address"),
    ("fudge 10.0.0.1 time1 0", "not a refclock address"),
    ("refclock nmea time1 1e6", "out of range"),
    ("refclock nmea stratum 16", "out of range 0..15"),
    ("refclock nmea refid G\u00e9", "printable ASCII"),
    ("refclock nmea flag1 2", "expects 0 or 1"),
    ("refclock nmea minpoll 18", "out of range 0..17"),
    ("server -6 127.127.20.0", "-6 does not apply"),
])
def test_refclock_errors(text: str, fragment: str) -> None:
    msgs = errors(text + "\n")
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith(f"t.conf:1: {text.split()[0]}: ")
    assert fragment in msgs[0]


def test_retired_refclock_errors_but_its_fudge_adds_no_noise() -> None:
    msgs = errors("server 127.127.3.1\nfudge 127.127.3.1 time1 0.0075 flag1 1\n")
    assert len(msgs) == 1 and "PSTI" in msgs[0] and "not carried" in msgs[0]


def test_duplicate_refclock_is_an_error_naming_the_first() -> None:
    msgs = errors("server 127.127.20.0\nrefclock nmea unit 0\n")
    assert msgs == ["t.conf:2: refclock: refclock 127.127.20.0 is configured twice "
                    "(first at t.conf:1)"]


def test_network_only_options_on_refclock_lines_are_warnings() -> None:
    config, diags = parse("server 127.127.1.0 burst key 4 version 3 ttl 1 iburst\n")
    assert {d.severity for d in diags} == {"warning"} and len(diags) == 4
    assert config.refclocks[0].iburst


def test_long_refid_is_truncated_with_a_warning() -> None:
    config, diags = parse("refclock nmea refid GPS12\n")
    assert config.refclocks[0].refid == "GPS1"
    assert [d.severity for d in diags] == ["warning"]


def test_registry_is_consulted_at_parse_time(standin_drivers: dict) -> None:  # type: ignore[type-arg]
    del standin_drivers[22], standin_drivers["pps"]
    assert "driver not available" in errors("server 127.127.22.0\n")[0]
