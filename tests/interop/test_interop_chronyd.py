"""chronyd as a client of the daemon: `chronyd -Q` measures the offset and never sets the clock."""

from __future__ import annotations

import re

from interop_support import find_chronyd, run_tool

_WRONG_BY = re.compile(r"System clock wrong by (-?\d+\.\d+) seconds")


def test_chronyd_measures_offset(local_daemon, tmp_path):
    daemon, host = local_daemon
    chronyd = find_chronyd()
    # Everything chronyd would write goes to tmp_path; -Q only prints the offset it measured.
    directives = [
        f"server {host} iburst minpoll -2 maxpoll -2 maxsamples 4",
        f"pidfile {tmp_path}/chronyd.pid",
        f"driftfile {tmp_path}/chrony.drift",
        "cmdport 0",
    ]
    result = run_tool([chronyd, "-Q", "-u", "root", "-t", "20", "-f", "/dev/null", *directives],
                      timeout=40)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output}\n{daemon.describe()}"
    match = _WRONG_BY.search(output)
    assert match, f"no offset in chronyd output:\n{output}"
    assert abs(float(match.group(1))) < 1e-3
