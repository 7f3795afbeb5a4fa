"""Golden decodes of real receiver captures (gpsd's test logs), in the spirit of gpsd's
``*.log.chk``: each capture in /work/shared/captures/nmea has its expected decoder output in
tests/drivers/golden/<name>.chk. A change that alters a decode shows up as a diff to review.

Regenerate after an intended change:  python tests/drivers/test_nmea_golden.py --regen
(or STRATUM1_REGEN_GOLDEN=1 pytest tests/drivers/test_nmea_golden.py).
"""

from __future__ import annotations

import calendar
import os
import sys
import time
from pathlib import Path

import pytest
from stratum1.drivers.nmea_decode import (
    NmeaDecoder,
    NmeaFramer,
    capture_date_ns,
    read_capture,
)

from stratum1.ntptime import NS_PER_S

CAPTURES = Path(os.environ.get("STRATUM1_NMEA_CAPTURES", "/work/shared/captures/nmea"))
GOLDEN = Path(__file__).parent / "golden"
#: Rollover pivot for captures without a ``# Date:`` header.
UNDATED_PIVOT_NS = calendar.timegm((2000, 1, 1, 0, 0, 0, 0, 0, 0)) * NS_PER_S


def _iso(ns: int) -> str:
    sec, frac = divmod(ns, NS_PER_S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac // 1_000_000:03d}Z"


def render(data: bytes, mode: int = 0) -> str:
    """The decoder's account of one capture: one line per non-status sentence, then totals."""
    # the Date header is when the log was submitted, which can be months after the capture:
    # pivot a year earlier (a live receiver gets the build date, which is also in the past)
    header = capture_date_ns(data)
    pivot = header - 365 * 86_400 * NS_PER_S if header is not None else None
    out = [f"# pivot {_iso(pivot) if pivot else 'none (2000-01-01)'} mode {mode:#x}"]
    decoder = NmeaDecoder(mode, pivot or UNDATED_PIVOT_NS)
    framer = NmeaFramer()
    for frame in framer.feed(read_capture(data)):
        if frame.problem is not None:
            r = decoder.feed_bad_frame(frame)
        else:
            r = decoder.feed_line(frame.data, None)
        if r.outcome == "status":
            continue
        kind = (r.sentence.talker + r.sentence.kind) if r.sentence else "-"
        parts = [f"@{frame.start}", r.outcome, kind]
        if r.timecode is not None:
            tc = r.timecode
            parts.append(_iso(tc.reference_ns))
            parts.append(tc.date_source)
            if tc.rollover_weeks:
                parts.append(f"rollover+{tc.rollover_weeks}w")
            if tc.leap_second:
                parts.append("leap-second")
        if r.error is not None:
            parts.append(f"{r.error.counter}: {r.error}")
        out.append(" ".join(parts))
    counts = " ".join(f"{k}={v}" for k, v in sorted(decoder.counts.items()))
    out.append(f"# counts {counts} noise_bytes={framer.noise_bytes}")
    status = decoder.status.as_dict()
    out.append("# status " + " ".join(f"{k}={v}" for k, v in sorted(status.items())))
    return "\n".join(out) + "\n"


def _captures() -> list[Path]:
    return sorted(CAPTURES.glob("*.log")) if CAPTURES.is_dir() else []


@pytest.mark.skipif(not _captures(), reason=f"no NMEA captures in {CAPTURES}")
@pytest.mark.parametrize("capture", _captures(), ids=lambda p: p.name)
def test_capture_matches_golden(capture: Path) -> None:
    got = render(capture.read_bytes())
    chk = GOLDEN / (capture.name + ".chk")
    if os.environ.get("STRATUM1_REGEN_GOLDEN"):
        chk.write_text(got)
    assert chk.exists(), f"no golden file {chk}: run with --regen"
    assert got == chk.read_text(), f"decode of {capture.name} changed; diff against {chk}"


def test_every_golden_has_a_capture() -> None:
    if not _captures():
        pytest.skip("no captures")
    names = {p.name for p in _captures()}
    stale = [c.name for c in GOLDEN.glob("*.chk") if c.name.removesuffix(".chk") not in names]
    assert not stale


if __name__ == "__main__":
    if "--regen" in sys.argv:
        for cap in _captures():
            (GOLDEN / (cap.name + ".chk")).write_text(render(cap.read_bytes()))
            print("wrote", GOLDEN / (cap.name + ".chk"))
    else:
        for cap in _captures():
            sys.stdout.write(f"== {cap.name}\n" + render(cap.read_bytes()))
