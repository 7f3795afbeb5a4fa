"""Tests for stratum1/restrict.py: the restrict table (most specific wins, default, -4/-6, masks,
ntpport, source) and AccessControl's decision for each flag, with a virtual clock."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1.config.model import Config, Discard, Location, Mru, RestrictEntry
from stratum1.config.parser import parse_text
from stratum1.ratelimit import MruLimits, RateLimiter
from stratum1.restrict import (
    AccessControl,
    Decision,
    Flag,
    RestrictTable,
    control_allowed,
    flag_names,
    flags_from_names,
    parse_host,
)
from stratum1.server import DROP, KOD, SERVE

S = 1_000_000_000
T0 = 1_700_000_000 * S
V4, V6 = socket.AF_INET, socket.AF_INET6


def entry(address: str | None, *flags: str, mask: str | None = None, family: int | None = None,
          source: bool = False) -> RestrictEntry:  # fmt: skip
    if family is None and address is not None:
        family = V6 if ":" in address else V4
    return RestrictEntry(address, mask, family, source, frozenset(flags), Location("ntp.conf", 1))


def table(*entries: RestrictEntry) -> RestrictTable:
    return RestrictTable.from_config(entries)


def names(t: RestrictTable, host: str, port: int = 40000) -> set[str]:
    return set(flag_names(t.lookup(host, port)))


# -- the table -------------------------------------------------------------------------------
def test_empty_table_restricts_nobody() -> None:
    t = table()
    assert t.lookup("192.0.2.1") == 0
    assert t.lookup("2001:db8::1") == 0


def test_default_applies_to_both_families_and_4_6_split_them() -> None:
    t = table(entry(None, "noquery"))
    assert names(t, "192.0.2.1") == names(t, "2001:db8::1") == {"noquery"}
    t = table(entry(None, "noquery", family=V4), entry(None, "ignore", family=V6))
    assert names(t, "192.0.2.1") == {"noquery"}
    assert names(t, "2001:db8::1") == {"ignore"}


def test_most_specific_entry_wins_whatever_the_line_order() -> None:
    lines = [
        entry(None, "ignore"),
        entry("10.0.0.0", "noserve", mask="255.0.0.0"),
        entry("10.1.0.0", "noquery", mask="255.255.0.0"),
        entry("10.1.2.3", "nomodify"),
    ]
    for order in (lines, lines[::-1]):
        t = table(*order)
        assert names(t, "10.1.2.3") == {"nomodify"}
        assert names(t, "10.1.2.4") == {"noquery"}
        assert names(t, "10.2.0.1") == {"noserve"}
        assert names(t, "11.0.0.1") == {"ignore"}


def test_host_bits_of_a_network_entry_are_ignored() -> None:
    t = table(entry("10.1.2.3", "noquery", mask="255.255.0.0"))
    assert names(t, "10.1.99.99") == {"noquery"}


def test_ipv6_prefixes() -> None:
    t = table(entry("2001:db8::", "noquery", mask="ffff:ffff::"),
              entry("2001:db8:1::", "ignore", mask="ffff:ffff:ffff::"))  # fmt: skip
    assert names(t, "2001:db8:2::5") == {"noquery"}
    assert names(t, "2001:db8:1::5") == {"ignore"}
    assert names(t, "2001:db9::1") == set()
    assert names(t, "fe80::1%eth0") == set()


def test_ipv4_mapped_addresses_use_the_ipv4_entries() -> None:
    t = table(entry("192.0.2.0", "noserve", mask="255.255.255.0"))
    assert names(t, "::ffff:192.0.2.7") == {"noserve"}
    assert parse_host("::ffff:192.0.2.7") == (V4, 0xC0000207)


def test_same_address_and_mask_add_flags_together() -> None:
    t = table(entry(None, "kod", "limited"), entry(None, "nopeer"))
    assert names(t, "192.0.2.1") == {"kod", "limited", "nopeer"}


def test_ntpport_entries_match_only_source_port_123() -> None:
    t = table(entry(None, "noquery"), entry("192.0.2.1", "ignore", "ntpport"))
    assert names(t, "192.0.2.1", 123) == {"ignore"}
    # Another port falls through to the next most specific entry, not to "no restrictions".
    assert names(t, "192.0.2.1", 50000) == {"noquery"}
    t.add(V4, 0xC0000201, 32, Flag.NOTRAP)
    assert names(t, "192.0.2.1", 50000) == {"notrap"}
    assert names(t, "192.0.2.1", 123) == {"ignore"}


def test_local_addresses_ignore_their_own_ntp_port() -> None:
    t = table()
    t.add_local_address("192.0.2.10")
    assert names(t, "192.0.2.10", 123) == {"ignore"}
    assert names(t, "192.0.2.10", 40000) == set()


def test_restrict_source_follows_associations() -> None:
    t = table(entry(None, "ignore"), entry(None, "nomodify", "noquery", source=True))
    assert t.has_source
    assert names(t, "198.51.100.7") == {"ignore"}
    assert t.add_source("198.51.100.7")
    assert names(t, "198.51.100.7") == {"nomodify", "noquery"}
    t.add_source("198.51.100.7")  # a second association to the same address
    t.remove_source("198.51.100.7")
    assert names(t, "198.51.100.7") == {"nomodify", "noquery"}
    t.remove_source("198.51.100.7")
    assert names(t, "198.51.100.7") == {"ignore"}
    assert any(r.source for r in table(entry(None, source=True)).rules()) is False


def test_without_restrict_source_associations_add_nothing() -> None:
    t = table(entry(None, "ignore"))
    generation = t.generation
    assert not t.add_source("198.51.100.7")
    assert names(t, "198.51.100.7") == {"ignore"}
    assert t.generation == generation


def test_source_and_explicit_host_entry_combine() -> None:
    t = table(entry("198.51.100.7", "notrap"), entry(None, "nomodify", source=True))
    t.add_source("198.51.100.7")
    assert names(t, "198.51.100.7") == {"notrap", "nomodify"}


def test_host_names_are_resolved_or_reported() -> None:
    e = RestrictEntry("time.example", None, None, False, frozenset({"noquery"}),
                      Location("ntp.conf", 7))  # fmt: skip
    t = RestrictTable.from_config([e])
    assert t.unresolved == ["time.example"]
    t = RestrictTable.from_config([e], resolve=lambda host, fam: ["192.0.2.5", "2001:db8::5"])
    assert names(t, "192.0.2.5") == names(t, "2001:db8::5") == {"noquery"}


def test_generation_changes_with_the_table() -> None:
    t = table()
    g = t.generation
    t.add(V4, 0, 8, Flag.NOQUERY)
    assert t.generation != g
    assert RestrictTable().generation != RestrictTable().generation


def test_rules_listing() -> None:
    t = table(entry(None, "kod"), entry("10.0.0.0", "ignore", mask="255.0.0.0"))
    rules = [r for r in t.rules() if r.family == V4]
    assert [(r.address, r.mask, r.prefixlen) for r in rules] == [
        ("10.0.0.0", "255.0.0.0", 8), ("0.0.0.0", "0.0.0.0", 0)]  # fmt: skip
    assert rules[0].origin == "ntp.conf:1"


def test_flag_values_are_ntpds() -> None:
    # ntpq shows these bits in mrulist "rstr"; its docs name 0x400 kod and 0x20 limited.
    assert flags_from_names(["kod", "limited"]) == 0x0420
    assert flags_from_names(["ignore", "noserve", "notrust", "version", "nopeer"]) == 0x1F
    assert flags_from_names(["ntpport"]) == 0


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_lookup_matches_a_direct_prefix_check(net: int, plen: int, addr: int) -> None:
    t = RestrictTable()
    t.add(V4, net, plen, Flag.NOQUERY)
    mask = ((1 << 32) - 1) ^ ((1 << (32 - plen)) - 1)
    expected = Flag.NOQUERY if (addr & mask) == (net & mask) else 0
    host = socket.inet_ntoa(addr.to_bytes(4, "big"))
    assert t.lookup(host) == expected


# -- access decisions ------------------------------------------------------------------------
def access(*entries: RestrictEntry, monitor: bool = True, limits: MruLimits | None = None
           ) -> AccessControl:  # fmt: skip
    limiter = RateLimiter(limits or MruLimits()) if monitor else None
    return AccessControl(table(*entries), limiter, rng=lambda: 0.5)


def test_decisions_are_the_servers_verdicts() -> None:
    assert (Decision.SERVE, Decision.DROP, Decision.KOD) == (SERVE, DROP, KOD)


def test_unrestricted_client_is_served() -> None:
    a = access()
    assert a.check("192.0.2.1", 40000, 3, 4, T0) is Decision.SERVE
    assert a.last_flags == 0


def test_ignore_drops_everything_and_records_nothing() -> None:
    a = access(entry(None, "ignore"))
    for mode in (1, 3, 4, 6):
        assert a.check("192.0.2.1", 40000, mode, 4, T0) is Decision.DROP
    assert a.stats.ignored == 4
    assert list(a.mru_entries()) == []


def test_noquery_drops_mode_6_only() -> None:
    a = access(entry(None, "noquery"))
    assert a.check("192.0.2.1", 40000, 6, 2, T0) is Decision.DROP
    assert a.check("192.0.2.1", 40000, 3, 4, T0 + 10 * S) is Decision.SERVE


def test_noserve_drops_time_but_answers_ntpq() -> None:
    a = access(entry(None, "noserve"))
    assert a.check("192.0.2.1", 40000, 3, 4, T0) is Decision.DROP
    assert a.check("192.0.2.1", 40000, 1, 4, T0) is Decision.DROP
    assert a.check("192.0.2.1", 40000, 6, 2, T0) is Decision.SERVE
    assert a.stats.noserve == 2


def test_mode_7_is_never_served() -> None:
    assert access().check("192.0.2.1", 40000, 7, 2, T0) is Decision.DROP


def test_version_flag_refuses_old_versions() -> None:
    a = access(entry(None, "version"))
    assert a.check("192.0.2.1", 40000, 3, 3, T0) is Decision.DROP
    assert a.check("192.0.2.1", 40000, 3, 4, T0 + 10 * S) is Decision.SERVE
    # mode 6 packets (ntpq sends version 2) are not subject to it
    assert a.check("192.0.2.1", 40000, 6, 2, T0 + 20 * S) is Decision.SERVE
    plain = access()
    assert plain.check("192.0.2.2", 40000, 3, 1, T0) is Decision.SERVE
    assert plain.check("192.0.2.3", 40000, 3, 0, T0) is Decision.DROP
    assert plain.check("192.0.2.4", 40000, 3, 5, T0) is Decision.DROP


def test_notrust_needs_a_mac() -> None:
    a = access(entry(None, "notrust"))
    assert a.check("192.0.2.1", 40000, 3, 4, T0) is Decision.DROP
    assert a.check("192.0.2.1", 40000, 3, 4, T0 + 10 * S, has_mac=True) is Decision.SERVE
    assert a.last_flags & Flag.NOTRUST  # the server verifies the MAC itself
    assert a.stats.notrust == 1


def test_limited_kod_answers_an_abuser_with_kod_then_drops() -> None:
    a = access(entry(None, "limited", "kod"))
    verdicts = [a.check("192.0.2.1", 40000, 3, 4, T0 + i * S) for i in range(30)]
    assert verdicts[0] is Decision.SERVE
    assert Decision.KOD in verdicts
    first = verdicts.index(Decision.KOD)
    assert set(verdicts[:first]) == {Decision.SERVE}
    assert verdicts[first + 1] is Decision.DROP
    assert a.stats.kod == verdicts.count(Decision.KOD)
    assert a.stats.limited == 30 - first


def test_limited_without_kod_only_drops() -> None:
    a = access(entry(None, "limited"))
    verdicts = {a.check("192.0.2.1", 40000, 3, 4, T0 + i * S) for i in range(30)}
    assert verdicts == {Decision.SERVE, Decision.DROP}


def test_server_and_broadcast_packets_never_get_a_kod() -> None:
    a = access(entry(None, "limited", "kod"))
    verdicts = {a.check("192.0.2.1", 123, 4, 4, T0 + i * S // 10) for i in range(30)}
    assert Decision.KOD not in verdicts and Decision.DROP in verdicts


def test_limited_does_not_apply_to_ntpq() -> None:
    a = access(entry(None, "limited", "kod"))
    verdicts = {a.check("192.0.2.1", 40000, 6, 2, T0 + i * S // 10) for i in range(50)}
    assert verdicts == {Decision.SERVE}


def test_polite_clients_behind_limited_are_served() -> None:
    a = access(entry(None, "limited", "kod"))
    for i in range(200):
        host = f"192.0.2.{i % 50}"
        assert a.check(host, 40000, 3, 4, T0 + i * S // 4) is Decision.SERVE  # each every 12.5 s


def test_monitoring_off_means_no_rate_limiting() -> None:
    a = access(entry(None, "limited", "kod"), monitor=False)
    verdicts = {a.check("192.0.2.1", 40000, 3, 4, T0 + i) for i in range(30)}
    assert verdicts == {Decision.SERVE}
    assert not a.last_flags & (Flag.LIMITED | Flag.KOD)
    assert list(a.mru_entries()) == []


def test_restrict_lookup_is_cached_in_the_mru_entry_and_follows_reloads() -> None:
    a = access(entry(None, "nopeer"))
    a.check("192.0.2.1", 40000, 3, 4, T0)
    mru = a.limiter.get("192.0.2.1")  # type: ignore[union-attr]
    assert mru is not None and mru.restrict_flags == Flag.NOPEER
    a.reload(table(entry(None, "noserve")))
    assert a.check("192.0.2.1", 40000, 3, 4, T0 + 10 * S) is Decision.DROP
    assert mru.restrict_flags == Flag.NOSERVE


def test_cached_flags_respect_ntpport() -> None:
    a = access(entry("192.0.2.1", "ignore", "ntpport"))
    assert a.check("192.0.2.1", 40000, 3, 4, T0) is Decision.SERVE
    assert a.check("192.0.2.1", 123, 3, 4, T0 + 10 * S) is Decision.DROP
    assert a.check("192.0.2.1", 40001, 3, 4, T0 + 20 * S) is Decision.SERVE


def test_garbage_address_is_dropped_not_raised() -> None:
    a = access()
    assert a.check("not-an-address", 1, 3, 4, T0) is Decision.DROP
    assert a.stats.bad_address == 1


def test_flake_drops_some() -> None:
    a = AccessControl(table(entry(None, "flake")), None, rng=lambda: 0.05)
    assert a.check("192.0.2.1", 40000, 3, 4, T0) is Decision.DROP
    b = AccessControl(table(entry(None, "flake")), None, rng=lambda: 0.5)
    assert b.check("192.0.2.1", 40000, 3, 4, T0) is Decision.SERVE


def test_mru_entries_expose_mrulist_fields() -> None:
    a = access(entry(None, "nopeer"))
    a.check("192.0.2.1", 40000, 3, 4, T0)
    a.check("2001:db8::1", 40001, 6, 2, T0 + S)
    entries = list(a.mru_entries())
    assert [(e.address, e.port, e.mode, e.version, e.count) for e in entries] == [
        ("2001:db8::1", 40001, 6, 2, 1), ("192.0.2.1", 40000, 3, 4, 1)]  # fmt: skip
    assert entries[1].flags == Flag.NOPEER


def test_control_allowed() -> None:
    assert control_allowed(0, 2)
    assert not control_allowed(Flag.NOQUERY, 2)
    assert control_allowed(Flag.NOMODIFY, 2) and not control_allowed(Flag.NOMODIFY, 3)
    assert not control_allowed(Flag.NOMODIFY, 8)
    assert not control_allowed(Flag.NOTRAP, 6) and control_allowed(Flag.NOTRAP, 1)
    assert not control_allowed(Flag.NOMRULIST, 10) and control_allowed(Flag.NOMRULIST, 1)


def test_adapter_for_the_servers_hook() -> None:
    a = access(entry(None, "noserve"))
    assert a.server_hook(("192.0.2.1", 40000), 3, 4, T0, False) == DROP
    assert a.server_hook(("192.0.2.1", 40000), 6, 2, T0, False) == SERVE


# -- from the configuration ------------------------------------------------------------------
HARDENED = """
restrict -4 default kod limited nomodify notrap nopeer noquery
restrict -6 default kod limited nomodify notrap nopeer noquery
restrict 127.0.0.1
restrict -6 ::1
restrict source nomodify notrap noquery
"""


def _config(text: str) -> Config:
    config, diagnostics = parse_text(text, "ntp.conf")
    assert not [d for d in diagnostics if d.is_error], diagnostics
    return config


def test_hardened_public_server_config() -> None:
    a = AccessControl.from_config(_config(HARDENED))
    assert a.monitoring
    assert a.check("127.0.0.1", 40000, 6, 2, T0) is Decision.SERVE
    assert a.check("::1", 40000, 6, 2, T0) is Decision.SERVE
    assert a.check("198.51.100.1", 40000, 6, 2, T0) is Decision.DROP
    assert a.check("198.51.100.1", 40000, 3, 4, T0) is Decision.SERVE
    verdicts = [a.check("198.51.100.2", 40000, 3, 4, T0 + i * S // 10) for i in range(5)]
    assert verdicts[0] is Decision.SERVE and Decision.KOD in verdicts


def test_disable_monitor_keeps_rate_limiting_when_limited_is_used() -> None:
    a = AccessControl.from_config(_config("disable monitor\nrestrict default limited kod\n"))
    assert a.monitoring  # as ntpd: "limited" needs the list, whatever "disable monitor" says
    b = AccessControl.from_config(_config("disable monitor\nrestrict default nopeer\n"))
    assert not b.monitoring
    assert b.check("192.0.2.1", 40000, 3, 4, T0) is Decision.SERVE
    assert list(b.mru_entries()) == []


def test_discard_and_mru_reach_the_limiter() -> None:
    cfg = Config(discard=Discard(average=5, minimum=10), mru=Mru(maxdepth=100, mindepth=10))
    a = AccessControl.from_config(cfg)
    assert a.limiter is not None
    assert (a.limiter.limits.average, a.limiter.limits.minimum) == (5, 10)
    assert (a.limiter.limits.maxdepth, a.limiter.limits.mindepth) == (100, 10)


@pytest.mark.parametrize("line", ["restrict 10.0.0.0 mask 255.0.0.0 noquery",
                                  "restrict 10.0.0.0/8 noquery"])  # fmt: skip
def test_mask_and_cidr_from_config(line: str) -> None:
    a = AccessControl.from_config(_config(line))
    assert a.flags_for("10.200.1.1") == Flag.NOQUERY
    assert a.flags_for("11.0.0.1") == 0


def test_server_sends_rate_kod_through_the_adapter() -> None:
    from stratum1.packet import NtpPacket
    from stratum1.server import NtpServer, ReplyTemplate
    from stratum1.snapshot import SystemSnapshot

    class Clock:
        now = T0

        def now_ns(self) -> int:
            return self.now

        def monotonic_ns(self) -> int:
            return self.now

    clock = Clock()
    a = AccessControl.from_config(_config(HARDENED))
    server = NtpServer(("127.0.0.1", 0), SystemSnapshot, clock,  # type: ignore[arg-type]
                       access=a.server_hook)  # fmt: skip
    template = ReplyTemplate(SystemSnapshot())
    request = NtpPacket(mode=3, transmit=0x1234).pack()
    replies = []
    for i in range(20):
        clock.now = T0 + i * S // 2
        replies.append(server.process(request, ("198.51.100.9", 40000), clock.now, template))
    kods = [r for r in replies if r is not None and r[12:16] == b"RATE"]
    assert replies[0] is not None and replies[0][12:16] != b"RATE"
    assert len(kods) >= 1 and server.stats.kod_sent == len(kods)
    assert None in replies and server.stats.restricted > 0
    kod = NtpPacket.unpack(kods[0])
    assert (kod.leap, kod.stratum, kod.mode) == (3, 0, 4)


@given(st.text(max_size=60))
def test_parse_host_rejects_garbage_with_valueerror_only(text: str) -> None:
    try:
        family, value = parse_host(text)
    except ValueError:
        return
    assert family in (V4, V6) and value >= 0


# -- the batched check agrees with the per-request one ---------------------------------------
HOSTS = ["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1", "::ffff:192.0.2.2", "bogus"]
FLAG_CHOICES = ["ignore", "noserve", "notrust", "version", "limited", "kod", "flake",
                "noquery", "nopeer"]  # fmt: skip
_requests = st.lists(
    st.tuples(
        st.sampled_from(HOSTS),
        st.sampled_from([123, 40000, 40000, 40001]),
        st.sampled_from([4, 4, 4, 3, 2, 1, 0, 5]),
        st.integers(0, 3 * S),  # gap to the previous request
        st.integers(0, 12),  # 0: end the batch here; 1: a mode-6 packet in between
        st.integers(1, 12),  # requests in a row from this address
        st.sampled_from([0, 1, S // 10, S // 2, S, 3 * S]),  # their spacing
    ),
    max_size=40,
)
_tables = st.lists(
    st.tuples(st.sampled_from([None, *HOSTS[:4], "192.0.2.0"]),
              st.sets(st.sampled_from(FLAG_CHOICES), max_size=3), st.booleans()),
    max_size=3,
)  # fmt: skip


def _build(rules: list, monitor: bool, depth: int, seed: int,
           compiled: bool = True) -> AccessControl:  # fmt: skip
    import random

    t = RestrictTable()
    if seed % 3:
        t.add_entry(entry(None, "limited", *(["kod"] if seed % 3 == 1 else [])))
    for address, flags, ntpport in rules:
        names_ = set(flags) | ({"ntpport"} if ntpport and address else set())
        mask = "255.255.255.0" if address == "192.0.2.0" else None
        t.add_entry(entry(address, *sorted(names_), mask=mask))
    limits = MruLimits(mindepth=depth, maxdepth=depth + 1, maxage=2, average=3, minimum=2)
    limiter = (RateLimiter(limits, rng=random.Random(seed).random, compiled=compiled)
               if monitor else None)  # fmt: skip
    return AccessControl(t, limiter, rng=random.Random(seed + 1).random)


def _state(a: AccessControl) -> tuple:
    mru = [(e.address, e.port, e.first_ns, e.last_ns, e.count, e.flags, e.mode, e.version,
            e.leak, e.restrict_flags, e.from_ntp_port) for e in a.mru_entries()]  # fmt: skip
    limiter = a.limiter.stats if a.limiter is not None else None
    return a.stats, limiter, mru, a.last_flags


def _runs(batch: list[tuple]) -> tuple[list[tuple], list[int]]:
    addresses, starts = [], []
    for k, (host, port, *_rest) in enumerate(batch):
        if not addresses or addresses[-1] != (host, port) or k % 7 == 3:
            addresses.append((host, port))  # k % 7: runs need not be maximal
            starts.append(k)
    return addresses, starts


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
@settings(max_examples=300, deadline=None)
@given(_requests, _tables, _tables, st.booleans(), st.integers(0, 3), st.integers(0, 99))
def test_check_clients_decides_exactly_as_check_per_request(
    compiled: bool, requests: list, rules: list, reload_rules: list, monitor: bool, depth: int,
    seed: int,
) -> None:
    single = _build(rules, monitor, depth, seed)
    batched = _build(rules, monitor, depth, seed, compiled)
    now = T0
    batch: list[tuple] = []
    reloaded = False

    def flush() -> None:
        if not batch:
            return
        addresses, starts = _runs(batch)
        got = batched.check_clients(addresses, starts, [b[2] for b in batch],
                                    [b[3] for b in batch])  # fmt: skip
        want = {}
        for k, (host, port, version, at) in enumerate(batch):
            decision = single.check(host, port, 3, version, at, False)
            if decision is not Decision.SERVE:
                want[k] = decision
        assert got == want
        assert _state(batched) == _state(single)
        batch.clear()

    for i, (host, port, version, gap, cut, repeat, spacing) in enumerate(requests):
        now += gap
        if cut == 0:
            flush()
        if cut == 1:
            flush()
            assert single.check(host, port, 6, 2, now) == batched.check(host, port, 6, 2, now)
        if i == len(requests) // 2 and not reloaded:
            flush()
            reloaded = True
            for a in (single, batched):
                a.reload(_build(reload_rules, monitor, depth, seed).table)
        for _ in range(repeat):
            batch.append((host, port, version, now))
            now += spacing
    flush()


def test_check_clients_serves_a_steady_flood_and_records_it_once_per_run() -> None:
    a = access(entry(None, "limited", "kod"))
    b = access(entry(None, "limited", "kod"))
    times = [T0 + k * S // 100 for k in range(64)]
    verdicts = b.check_clients([("192.0.2.1", 40000)], [0], [4] * 64, times)
    want = [a.check("192.0.2.1", 40000, 3, 4, t) for t in times]
    assert verdicts == {k: d for k, d in enumerate(want) if d is not Decision.SERVE}
    assert verdicts[1] is Decision.KOD  # the minimum headway is broken at once
    assert set(verdicts.values()) == {Decision.KOD, Decision.DROP}
    (e,) = list(b.mru_entries())
    assert (e.count, e.last_ns, e.first_ns) == (64, times[-1], times[0])
    assert b.stats.checked == 64 and b.stats.kod == a.stats.kod


def test_check_clients_without_monitoring_caches_the_lookup_per_table() -> None:
    a = access(entry("192.0.2.1", "noserve"), monitor=False)
    got = a.check_clients([("192.0.2.1", 1), ("192.0.2.2", 2)], [0, 2], [4] * 4, [T0] * 4)
    assert got == {0: Decision.DROP, 1: Decision.DROP}
    assert a.stats.noserve == 2 and a.stats.checked == 4
    a.reload(table())
    assert a.check_clients([("192.0.2.1", 1)], [0], [4], [T0]) == {}
    assert a.check_clients([], [], [], []) == {}
