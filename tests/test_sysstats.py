"""Tests for stratum1/sysstats.py: the ss_* counters ntpq's sysstats reads."""

from types import SimpleNamespace

from stratum1.server import ServerStats
from stratum1.sysstats import RESET_INTERVAL_S, SysStats, server_counters

S = 1_000_000_000
T0 = 1_800_000_000 * S


def test_server_counters_add_up_every_server_and_take_limited_from_access():
    a, b = ServerStats(received=5, replied=4, new_version=3), ServerStats(received=2, replied=1)
    access = SimpleNamespace(stats=SimpleNamespace(limited=7))
    total = server_counters([SimpleNamespace(stats=a), SimpleNamespace(stats=b)], access)
    assert total["received"] == 7 and total["replied"] == 5 and total["new_version"] == 3
    assert total["limited"] == 7
    assert server_counters([]) == {}


def test_totals_and_the_hourly_reset():
    counters = {"received": 10, "new_version": 8, "old_version": 2, "malformed": 1,
                "bad_version": 1, "kod_sent": 1, "replied": 9, "restricted": 3}
    stats = SysStats(T0, lambda: counters)
    values = dict(stats.variables(T0 + 90 * S, control_requests=4))
    assert values["ss_uptime"] == "90" and values["ss_reset"] == "90"
    assert values["ss_reset_r"] == "90" and values["ss_numctlreq"] == "4"
    assert values["ss_received"] == values["ss_received_r"] == "10"
    assert values["ss_thisver"] == "8" and values["ss_oldver"] == "2"
    assert values["ss_badformat"] == "2" and values["ss_kodsent"] == "1"
    assert values["ss_restricted"] == "3" and values["ss_processed"] == "8"

    stats.tick(T0 + (RESET_INTERVAL_S - 1) * S)  # not an hour yet: nothing moves
    assert dict(stats.variables(T0 + RESET_INTERVAL_S * S))["ss_received"] == "10"
    stats.tick(T0 + RESET_INTERVAL_S * S)
    counters["received"] = 25
    values = dict(stats.variables(T0 + (RESET_INTERVAL_S + 30) * S))
    assert values["ss_received"] == "15" and values["ss_received_r"] == "25"
    assert values["ss_reset"] == "30" and values["ss_uptime"] == str(RESET_INTERVAL_S + 30)


def test_every_name_ntpq_asks_for_is_there_with_its_running_twin():
    names = dict(SysStats(T0, dict).variables(T0))
    for name in ("reset", "received", "thisver", "oldver", "ver1", "ver1client", "ver1zero",
                 "ver1symm", "badformat", "badauth", "declined", "restricted", "limited",
                 "kodsent", "processed"):
        assert f"ss_{name}" in names and f"ss_{name}_r" in names, name
    assert "ss_uptime" in names and "ss_numctlreq" in names
