"""The gpsd plumbing the gpsd driver's tests stand on: gpsfake replays a real capture into a
real gpsd, whose TPV reports carry the capture's own date and time."""

from __future__ import annotations

import json
import re
import socket
import time

from interop_support import NMEA_CAPTURES

_RMC_DATE = re.compile(r"^\$G[PNL]RMC,[^,]*,A,(?:[^,]*,){6}(\d{6}),")
# Time of day of the sentences gpsd takes time from (RMC, GGA, GLL, ZDA; GLL has it 5th).
_TOD = re.compile(r"^\$G[PNL](?:RMC|GGA|ZDA),(\d{6})|^\$G[PNL]GLL,(?:[^,]*,){4}(\d{6})")


def _capture_dates_and_times(text: str) -> tuple[set[str], set[str]]:
    dates, times = set(), set()
    for line in text.splitlines():
        if match := _RMC_DATE.match(line):
            dmy = match.group(1)
            dates.add(f"20{dmy[4:6]}-{dmy[2:4]}-{dmy[0:2]}")
        if match := _TOD.match(line):
            hms = match.group(1) or match.group(2)
            times.add(f"{hms[0:2]}:{hms[2:4]}:{hms[4:6]}")
    return dates, times


def test_gpsd_reports_the_capture_time(gpsfake):
    capture = NMEA_CAPTURES / "ublox-8.log"
    fake = gpsfake(capture)
    dates, times = _capture_dates_and_times(capture.read_text(errors="replace"))
    assert dates and times, "no valid RMC in the capture"
    seen: list[str] = []
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
        buf = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < 3:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                report = json.loads(line)
                if report.get("class") == "TPV" and report.get("mode", 0) >= 2 and "time" in report:
                    seen.append(report["time"][:19])
    assert seen, "gpsd sent no TPV with a fix"
    for stamp in seen:
        date, tod = stamp.split("T")
        assert date in dates and tod in times, (stamp, sorted(dates), sorted(times)[:5])
