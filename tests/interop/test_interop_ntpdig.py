"""ntpsec's ntpdig (and its `sntp` name) query the daemon serving the LOCAL clock."""

from __future__ import annotations

import json
import re

from interop_support import (
    LI_UNSYNC,
    LOCAL_CONF,
    MAXDIST,
    MODE_SERVER,
    find_tool,
    loopback_host,
    ntp_query,
    run_tool,
)

MAX_OFFSET = 1e-3  # same machine, same clock: anything near a millisecond is a bug


def test_raw_reply_is_stratum_11_locl(local_daemon):
    daemon, host = local_daemon
    reply = ntp_query(host, 123, timeout=2.0)
    assert reply.mode == MODE_SERVER
    assert reply.version == 4
    assert reply.leap != LI_UNSYNC
    assert reply.stratum == 11, daemon.describe()
    assert reply.refid_text == "LOCL"
    assert abs(reply.offset) < MAX_OFFSET
    assert reply.delay >= 0
    assert reply.root_distance <= MAXDIST


def test_first_synchronised_reply_is_within_maxdist(start_daemon):
    # A server whose first "synchronised" answers carry a root distance no client accepts
    # makes chronyd -Q and ntpd clients give up on it for its first seconds.
    host = loopback_host()
    daemon = start_daemon(LOCAL_CONF, listen=f"{host}:123")
    reply = daemon.wait_for_reply(host, 123, timeout=30.0)
    assert reply.root_distance <= MAXDIST, reply


def test_ntpdig_json(local_daemon):
    daemon, host = local_daemon
    ntpdig = find_tool("ntpdig", "ntpsec-ntpdig")
    result = run_tool([ntpdig, "-j", "-t", "3", host])
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{daemon.describe()}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stratum"] == 11
    assert report["leap"] == "no-leap"
    assert report["ip"] == host
    assert abs(report["offset"]) < MAX_OFFSET
    assert report["adjusted"] is False


# `sntp` is the classic name; on Debian it is ntpdig under another name with the text report:
# "2026-11-22 05:00:00.123456 (+0000) +0.000012 +/- 0.000123 127.0.0.5 s11 no-leap"
_SNTP_LINE = re.compile(r"\s([+-]\d+\.\d+) \+/- (\d+\.\d+) (\S+)(?: \S+)? s(\d+) (\S+)$")


def test_sntp_text(local_daemon):
    daemon, host = local_daemon
    sntp = find_tool("sntp", "sntp")
    result = run_tool([sntp, "-t", "3", host])
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{daemon.describe()}"
    line = result.stdout.strip().splitlines()[-1]
    match = _SNTP_LINE.search(line)
    assert match, f"unexpected sntp output: {line!r}"
    offset, _error, shown_host, stratum, leap = match.groups()
    assert shown_host == host
    assert int(stratum) == 11
    assert leap == "no-leap"
    assert abs(float(offset)) < MAX_OFFSET
