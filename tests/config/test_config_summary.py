"""stratum1/config/summary.py: what `stratum1 config check` prints."""

from __future__ import annotations

from stratum1.config.model import Config
from stratum1.config.parser import parse_text
from stratum1.config.summary import summarize


def test_summary_lists_sources_access_files_and_keys() -> None:
    config, diags = parse_text(
        "server 127.127.20.0 mode 17 prefer\nfudge 127.127.20.0 time2 0.35 flag1 1\n"
        "server -4 ntp.example.org iburst maxpoll 8\nrestrict default kod limited\n"
        "restrict 10.0.0.0/8 nomodify\ndriftfile /var/lib/ntp/drift\nkeys /k\n"
        "trustedkey 1 2 3 7\ncontrolkey 7\ntos orphan 10\nstatistics loopstats\n"
        "interface listen eth0\n", "ntp.conf")
    assert not [d for d in diags if d.is_error]
    text = summarize(config)
    for fragment in ("configuration read from ntp.conf",
                     "127.127.20.0 nmea(0) mode 17 time2 0.35 flag1 1 prefer",
                     "server -4 ntp.example.org iburst poll 6..8",
                     "default: kod limited", "10.0.0.0 mask 255.0.0.0: nomodify",
                     "driftfile: /var/lib/ntp/drift", "trusted keys: 1-3 7", "control key: 7",
                     "orphan mode at stratum 10", "statistics: loopstats",
                     "interface listen eth0"):
        assert fragment in text, (fragment, text)


def test_summary_of_empty_config_warns_of_no_sources() -> None:
    assert "no time sources configured" in summarize(Config())
