"""Tests for stratum1/interfaces.py: ntpd's interface rules over this host's addresses."""

from stratum1.config.parser import parse_text
from stratum1.interfaces import Binding, LocalAddress, action_for, local_addresses, plan_bindings

HOST = [
    LocalAddress("lo", "127.0.0.1"),
    LocalAddress("eth0", "192.0.2.2"),
    LocalAddress("eth1", "198.51.100.7"),
    LocalAddress("eth0", "2001:db8::2"),
    LocalAddress("lo", "::1"),
]


def rules(text):
    config, diags = parse_text(text)
    assert not [d for d in diags if d.severity == "error"]
    return config.interfaces


def test_no_rules_serves_the_wildcards():
    assert plan_bindings((), HOST) == [Binding("0.0.0.0"), Binding("::")]


def test_family_options():
    assert plan_bindings((), HOST, ipv6=False) == [Binding("0.0.0.0")]
    assert plan_bindings((), HOST, ipv4=False) == [Binding("::")]


def test_ignore_wildcard_opens_each_address_and_the_last_matching_rule_wins():
    r = rules(
        "interface ignore wildcard\n"
        "interface ignore all\n"
        "interface listen eth0\n"
        "interface drop 192.0.2.0/24\n"
    )
    plan = plan_bindings(r, HOST)
    # all excludes localhost, so lo keeps the default (listen); eth1 is ignored.
    assert plan == [
        Binding("127.0.0.1"),
        Binding("192.0.2.2", drop=True),
        Binding("2001:db8::2"),
        Binding("::1"),
    ]


def test_drop_under_a_listened_wildcard_shadows_the_address():
    plan = plan_bindings(rules("interface drop 198.51.100.7\n"), HOST, ipv6=False)
    assert plan == [Binding("0.0.0.0"), Binding("198.51.100.7", drop=True)]


def test_action_for_prefix_and_family():
    r = rules("interface ignore ipv6\ninterface listen 2001:db8::/32\n")
    assert action_for(r, HOST[3], 10) == "listen"
    assert action_for(r, HOST[4], 10) == "ignore"
    assert action_for(r, HOST[1], 2) == "listen"


def test_local_addresses_include_loopback():
    found = local_addresses()
    assert any(a.address == "127.0.0.1" and a.interface == "lo" for a in found)
