"""ntpsec's ntpq reads the daemon's system variables over mode 6."""

from __future__ import annotations

import re

from interop_support import find_tool, run_tool


def test_ntpq_readvars(local_daemon):
    daemon, host = local_daemon
    ntpq = find_tool("ntpq", "ntpsec")
    result = run_tool([ntpq, "-c", "rv 0 stratum,refid,leap", host], timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    variables = dict(re.findall(r"(\w+)=([^,\s]+)", output))
    assert variables.get("stratum") == "11", output
    assert variables.get("refid") == "LOCL", output
    assert variables.get("leap") in {"00", "0"}, output
