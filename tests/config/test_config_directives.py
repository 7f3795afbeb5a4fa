"""stratum1/config/directives.py: restrict, discard, tos, tinker, files, statistics, enable,
interface, keys, setvar, ttl, broadcast/multicast clients and the small ones."""

from __future__ import annotations

import socket

import pytest

from stratum1.config.model import DEFAULT_ENABLED, Discard, Tinker, Tos
from stratum1.config.parser import parse_text


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_text(text, "t.conf")


def ok(text: str):  # type: ignore[no-untyped-def]
    config, diags = parse(text)
    assert [d for d in diags if d.is_error] == [], diags
    return config


def errors(text: str) -> list[str]:
    return [str(d) for d in parse(text)[1] if d.is_error]


# --- restrict -------------------------------------------------------------------------------------

def test_restrict_default_and_families() -> None:
    c = ok("restrict default kod limited\nrestrict -4 default ignore\nrestrict -6 default noquery\n")
    assert [(r.address, r.family, r.flags) for r in c.restrict] == [
        (None, None, frozenset({"kod", "limited"})),
        (None, socket.AF_INET, frozenset({"ignore"})),
        (None, socket.AF_INET6, frozenset({"noquery"})),
    ]


def test_restrict_address_mask_prefix_source() -> None:
    c = ok("restrict 192.168.0.0 mask 255.255.0.0 nomodify\nrestrict 10.0.0.0/8\n"
           "restrict 2001:db8::/32 notrust\nrestrict source nopeer\nrestrict ntp.example.org\n")
    r = c.restrict
    assert (r[0].address, r[0].mask, r[0].family) == ("192.168.0.0", "255.255.0.0", socket.AF_INET)
    assert r[1].mask == "255.0.0.0"
    assert (r[2].mask, r[2].family) == ("ffff:ffff::", socket.AF_INET6)
    assert r[3].source and r[3].address is None and r[3].flags == {"nopeer"}
    assert (r[4].address, r[4].family) == ("ntp.example.org", None)


def test_every_restrict_flag_is_accepted() -> None:
    flags = "ignore kod limited lowpriotrap nomodify noquery nopeer noserve notrap notrust " \
            "ntpport version"
    assert ok(f"restrict default {flags}\n").restrict[0].flags == frozenset(flags.split())


@pytest.mark.parametrize("line,fragment", [
    ("restrict", "needs default, source or an address"),
    ("restrict default nomodfy", "unknown flag 'nomodfy' (did you mean 'nomodify'?)"),
    ("restrict 10.0.0.0 mask 255.0.255.0", "not contiguous"),
    ("restrict 10.0.0.0 mask ffff::", "not of the same address family"),
    ("restrict default mask 255.0.0.0", "mask applies only to an address"),
    ("restrict 10.0.0.0/8 mask 255.0.0.0", "mask given twice"),
    ("restrict 10.0.0.0 mask", "mask needs a value"),
    ("restrict -6 10.0.0.1", "not an IPv6 address"),
    ("restrict 10.0.0.300", "not a valid IPv4 address"),
    ("restrict 127.127.20.0", "refclock"),
])
def test_restrict_errors(line: str, fragment: str) -> None:
    msgs = errors(line + "\n")
    assert len(msgs) == 1 and msgs[0].startswith("t.conf:1: restrict: ") and fragment in msgs[0]


# --- tos / tinker / discard ------------------------------------------------------------------------

def test_defaults_are_ntpd_defaults() -> None:
    c = ok("")
    assert c.tos == Tos() and c.tos.orphan == 16 and c.tos.minsane == 1 and c.tos.maxdist == 1.5
    assert c.tinker == Tinker() and c.tinker.step == 0.128 and c.tinker.panic == 1000
    assert c.discard == Discard(average=3, minimum=2, monitor=3000)
    assert c.enabled == DEFAULT_ENABLED


def test_tos_all_options_and_lines_accumulate() -> None:
    c = ok("tos ceiling 10 cohort 1 floor 2 orphan 7 orphanwait 60 mindist 0.01 maxdist 2\n"
           "tos minclock 4 minsane 3 maxclock 11 beacon 900 basedate 2024-06-01\n")
    t = c.tos
    assert (t.ceiling, t.cohort, t.floor, t.orphan, t.orphanwait) == (10, True, 2, 7, 60)
    assert (t.mindist, t.maxdist, t.minclock, t.minsane, t.maxclock) == (0.01, 2, 4, 3, 11)
    assert (t.beacon, t.basedate) == (900, "2024-06-01")


def test_tinker_all_options() -> None:
    c = ok("tinker step 0 stepout 300 panic 0 allan 12 dispersion 10 freq -12.5 huffpuff 7200\n")
    t = c.tinker
    assert (t.step, t.stepout, t.panic, t.allan, t.dispersion, t.freq, t.huffpuff) == (
        0, 300, 0, 12, 10, -12.5, 7200)


def test_discard() -> None:
    assert ok("discard average 4 minimum 1 monitor 1000\n").discard == Discard(4, 1, 1000)


@pytest.mark.parametrize("line,fragment", [
    ("tos", "needs at least one of"),
    ("tos orphan 17", "out of range 1..16"),
    ("tos cohort 2", "out of range 0..1"),
    ("tos mindist -1", "out of range"),
    ("tos maxdist nan", "expects a number"),
    ("tos basedate 24-01-01", "expects a date"),
    ("tos floor 9 ceiling 4", "floor 9 is above ceiling 4"),
    ("tos minclock 9 maxclock 4", "minclock 9 is above maxclock 4"),
    ("tinker huffpuff 100", "below the minimum span of 900 s"),
    ("tinker freq 600", "out of range -500..500"),
    ("tinker stepp 1", "did you mean 'step'"),
    ("discard average 17", "out of range 0..16"),
])
def test_system_option_errors(line: str, fragment: str) -> None:
    msgs = errors(line + "\n")
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith(f"t.conf:1: {line.split()[0]}: ") and fragment in msgs[0]


def test_tinker_freq_with_driftfile_warns() -> None:
    _, diags = parse("driftfile /d\ntinker freq 10\n")
    assert [d.severity for d in diags] == ["warning"]


# --- files, statistics, flags ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["driftfile", "leapfile", "logfile", "pidfile", "statsdir",
                                  "keys", "keysdir"])
def test_file_directives(name: str) -> None:
    assert getattr(ok(f"{name} /some/path\n"), name) == "/some/path"
    assert errors(f"{name}\n") == [f"t.conf:1: {name}: expects one file name"]
    _, diags = parse(f"{name} /a\n{name} /b\n")
    assert [d.severity for d in diags] == ["warning"]


def test_statistics_and_filegen() -> None:
    c = ok("statsdir /var/log/ntpstats/\nstatistics loopstats peerstats\n"
           "filegen peerstats file peers type week nolink disable\n"
           "filegen clockstats file clocks type day enable\n")
    assert c.statistics == {"loopstats", "peerstats"}
    gens = {f.name: f for f in c.filegens}
    assert (gens["loopstats"].file, gens["loopstats"].type, gens["loopstats"].enabled) == (
        "loopstats", "day", True)
    assert (gens["peerstats"].file, gens["peerstats"].type, gens["peerstats"].link,
            gens["peerstats"].enabled) == ("peers", "week", False, False)
    assert gens["clockstats"].enabled


def test_statistics_errors() -> None:
    assert "did you mean 'loopstats'" in errors("statistics loopstat\n")[0]
    assert "expects one of" in errors("filegen loopstats type hourly\n")[0]
    assert "both enable and disable" in errors("filegen loopstats enable disable\n")[0]
    assert "unknown statistics file" in errors("filegen bogus\n")[0]


def test_enable_disable_apply_in_order() -> None:
    c = ok("disable monitor kernel\nenable pps calibrate\nenable kernel\n")
    assert c.enabled == (DEFAULT_ENABLED - {"monitor"}) | {"pps", "calibrate"}
    assert "did you mean 'kernel'" in errors("enable kernal\n")[0]


def test_enable_mode7_warns_and_disable_mode7_is_silent() -> None:
    _, diags = parse("enable mode7\ndisable mode7\n")
    assert [(d.severity, d.location.line) for d in diags] == [("warning", 1)]


def test_logconfig() -> None:
    assert ok("logconfig =syncall +clockinfo -peerevents allall\n").logconfig == (
        "=syncall", "+clockinfo", "-peerevents", "allall")
    assert "bad item" in errors("logconfig =everything\n")[0]


# --- interface -----------------------------------------------------------------------------------

def test_interface_rules() -> None:
    c = ok("interface listen eth0\ninterface ignore wildcard\ninterface drop ipv6\n"
           "nic listen 192.0.2.1\ninterface listen 2001:db8::/32\ninterface ignore all\n")
    assert [(r.action, r.match, r.value, r.prefixlen) for r in c.interfaces] == [
        ("listen", "name", "eth0", None), ("ignore", "wildcard", None, None),
        ("drop", "ipv6", None, None), ("listen", "address", "192.0.2.1", None),
        ("listen", "address", "2001:db8::", 32), ("ignore", "all", None, None)]


@pytest.mark.parametrize("line", ["interface listen", "interface allow eth0",
                                  "interface listen 192.0.2.0/40", "interface listen a/b/c",
                                  "interface listen eth0 eth1"])
def test_interface_errors(line: str) -> None:
    assert len(errors(line + "\n")) == 1


# --- keys ----------------------------------------------------------------------------------------

def test_trustedkey_with_ranges() -> None:
    c = ok("trustedkey 1 2 (10 ... 12) 20-21\ntrustedkey (30...31)\n")
    assert c.trustedkeys == {1, 2, 10, 11, 12, 20, 21, 30, 31}


@pytest.mark.parametrize("line,fragment", [
    ("trustedkey", "needs one or more key numbers"),
    ("trustedkey 0", "out of range 1..65535"),
    ("trustedkey x", "expects an integer"),
    ("trustedkey (5 ... 3)", "is empty"),
    ("trustedkey (5 3)", "(first ... last)"),
    ("controlkey 70000", "out of range"),
    ("controlkey", "expects one key number"),
])
def test_key_errors(line: str, fragment: str) -> None:
    msgs = errors(line + "\n")
    assert len(msgs) == 1 and fragment in msgs[0]


def test_controlkey_not_trusted_warns() -> None:
    c, diags = parse("keys /k\ncontrolkey 9\n")
    assert c.controlkey == 9
    assert [str(d) for d in diags] == [
        "t.conf:2: warning: controlkey: controlkey 9 is not listed in trustedkey"]


# --- the rest ------------------------------------------------------------------------------------

def test_setvar() -> None:
    c = ok('setvar location = "rack 4, Amsterdam" default\nsetvar contact=noc@example.net\n')
    assert [(v.name, v.value, v.default) for v in c.setvars] == [
        ("location", "rack 4, Amsterdam", True), ("contact", "noc@example.net", False)]
    assert "expects name = value" in errors("setvar location\n")[0]
    assert "not a valid variable name" in errors("setvar 1x = y\n")[0]


def test_ttl_broadcastclient_multicast_manycast() -> None:
    c = ok("ttl 1 4 16\nbroadcastclient novolley\nmulticastclient\nmanycastserver 239.1.1.1 "
           "192.168.1.255\nbroadcastdelay 0.008\n")
    assert c.ttl == (1, 4, 16) and c.broadcastclient and c.novolley
    assert c.multicastclient == ("224.0.1.1",)
    assert c.manycastserver == ("239.1.1.1", "192.168.1.255")
    assert c.broadcastdelay == 0.008
    assert "expects 1 to 8" in errors("ttl 1 2 3 4 5 6 7 8 9\n")[0]
    assert "needs one or more addresses" in errors("manycastserver\n")[0]


def test_mru_rlimit_dscp_nts() -> None:
    c = ok("mru maxdepth 1000 maxage 64\nrlimit memlock 32\ndscp 46\n"
           "nts cert /etc/cert.pem key /etc/key.pem\nnts enable\n")
    assert (c.mru.maxdepth, c.mru.maxage, c.rlimit.memlock, c.dscp) == (1000, 64, 32, 46)
    assert (c.nts.enable, c.nts.cert, c.nts.key) == (True, "/etc/cert.pem", "/etc/key.pem")
