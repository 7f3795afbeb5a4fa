"""Statistics files: record formats line for line, file generations and links, failures, and
ntpviz drawing a directory written from the simulated core."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.config.parser import parse_text
from stratum1.ntptime import NS_PER_S, ns_to_ntp64
from stratum1.stats import (
    FileGeneration,
    StatsWriter,
    SysCounters,
    generation_suffix,
    ntp_seconds,
    peer_status_word,
    refid_text,
    valid_filename,
)

# 2026-01-01T00:00:00Z = MJD 61041
JAN1 = 1_767_225_600 * NS_PER_S


class FakeClock:
    def __init__(self, now_ns: int) -> None:
        self.t = now_ns

    def now_ns(self) -> int:
        return self.t


def config(statsdir: Path, text: str):
    cfg, diags = parse_text(f"statsdir {statsdir}\n{text}", "<test>")
    assert [d for d in diags if d.severity == "error"] == []
    return cfg


# -- formats ---------------------------------------------------------------------------------


def test_loopstats_line_matches_ntpd():
    w = StatsWriter(config(Path("/nonexistent"), "statistics loopstats"), FakeClock(JAN1))
    line = w.loopstats(JAN1 + 3723_500_000_000, -1.5e-6, -12.345678, 2.5e-7, 0.0042, 4)
    assert line == "61041 3723.500 -0.000001500 -12.345678 0.000000250 0.004200 4"


def test_peerstats_line_matches_ntpd():
    w = StatsWriter(config(Path("/nonexistent"), "statistics peerstats"), FakeClock(JAN1))
    line = w.peerstats(JAN1 + 1_000_000, "127.127.20.0", 0x9614, 0.000123, 0.0, 0.0005, 1e-5)
    assert line == "61041 0.001 127.127.20.0 9614 0.000123000 0.000000000 0.000500000 0.000010000"


def test_clockstats_line_matches_ntpd():
    w = StatsWriter(config(Path("/nonexistent"), "statistics clockstats"), FakeClock(JAN1))
    line = w.clockstats(JAN1 + 86_399_999_000_000, "127.127.28.0", "14 14 0 0 0\r")
    assert line == "61041 86399.999 127.127.28.0 14 14 0 0 0"


def test_rawstats_line_matches_ntpd_4_2_8():
    w = StatsWriter(config(Path("/nonexistent"), "statistics rawstats"), FakeClock(JAN1))
    t = ns_to_ntp64(JAN1)
    line = w.rawstats(JAN1, "192.0.2.1", "192.0.2.2", t, t + (1 << 31), t + (1 << 32), t + 5,
                      leap=0, version=4, mode=4, stratum=2, ppoll=6, precision=-23,
                      root_delay=0.001234, root_dispersion=0.0005, refid=bytes([10, 0, 0, 1]))
    assert line == ("61041 0.000 192.0.2.1 192.0.2.2 3976214400.000000000 3976214400.500000000"
                    " 3976214401.000000000 3976214400.000000001 0 4 4 2 6 -23 0.001234 0.000500"
                    " 10.0.0.1")


def test_refid_text():
    assert refid_text(b"GPS\0", 1) == "GPS"
    assert refid_text(b"\xc0\x00\x02\x01", 3) == "192.0.2.1"
    assert refid_text("INIT", 16) == "INIT"


def test_sysstats_reports_changes_since_the_last_line():
    clock = FakeClock(JAN1)
    w = StatsWriter(config(Path("/nonexistent"), "statistics sysstats"), clock)
    first = w.sysstats(JAN1 + 3600 * NS_PER_S, SysCounters(received=100, processed=90, kod_sent=2))
    assert first == "61041 3600.000 3600 100 90 0 0 0 0 0 0 0 2"
    second = w.sysstats(JAN1 + 5400 * NS_PER_S, SysCounters(received=150, processed=120, kod_sent=2))
    assert second == "61041 5400.000 1800 50 30 0 0 0 0 0 0 0 0"


def test_sys_counters_from_server_stats():
    from stratum1.server import ServerStats

    a = ServerStats(received=10, new_version=6, old_version=1, malformed=2, restricted=1,
                    kod_sent=1, mode7=1)
    b = ServerStats(received=5, new_version=5)
    c = SysCounters.from_server_stats([a, b])
    assert (c.received, c.new_version, c.old_version) == (15, 11, 1)
    assert (c.bad_length, c.restricted, c.declined, c.kod_sent) == (2, 1, 1, 1)
    assert c.processed == 15 - a.dropped


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_ntp_seconds_is_within_half_a_nanosecond(stamp):
    secs, frac = ntp_seconds(stamp).split(".")
    assert len(frac) == 9
    exact = stamp / (1 << 32)
    assert abs(int(secs) + int(frac) / 1e9 - exact) <= 1e-9 * max(1.0, exact) * 1e-6 + 6e-10


def test_peer_status_word_from_association_state():
    class A:
        reach = 0o377
        select_code = 6
        event_count = 1
        last_event = 4

    assert peer_status_word(A()) == 0x9614


# -- file generations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "expected"),
    [("none", ""), ("pid", ".#4242"), ("day", ".20260101"), ("week", ".2026w01"),
     ("month", ".202601"), ("year", ".2026"), ("age", ".a00086400")],
)
def test_generation_suffixes(type_, expected):
    assert generation_suffix(type_, JAN1 // NS_PER_S, pid=4242, uptime_s=86_400 + 5) == expected


def test_week_generation_uses_the_iso_year():
    # 2027-01-01 is a Friday: ISO week 53 of 2026.
    assert generation_suffix("week", 1_798_761_600, pid=1, uptime_s=0) == ".2026w53"


def test_filenames_may_not_leave_statsdir():
    assert valid_filename("loopstats") and valid_filename("gps/loopstats")
    assert not valid_filename("../loopstats") and not valid_filename("/etc/passwd")
    with pytest.raises(ValueError):
        FileGeneration("loopstats", "/tmp", "a/../../x")


def test_day_files_and_link_follow_the_date(tmp_path):
    clock = FakeClock(JAN1 - 60 * NS_PER_S)
    w = StatsWriter(config(tmp_path, "statistics loopstats"), clock)
    w.loopstats(clock.t, 1e-6, 1.0, 1e-7, 0.001, 4)
    w.flush()
    assert (tmp_path / "loopstats.20251231").read_text().startswith("61040 86340.000 ")
    assert os.path.samefile(tmp_path / "loopstats", tmp_path / "loopstats.20251231")
    clock.t = JAN1 + 60 * NS_PER_S
    w.loopstats(clock.t, 2e-6, 1.0, 1e-7, 0.001, 4)
    w.flush()
    assert (tmp_path / "loopstats.20260101").read_text().startswith("61041 60.000 ")
    assert os.path.samefile(tmp_path / "loopstats", tmp_path / "loopstats.20260101")
    assert len((tmp_path / "loopstats.20251231").read_text().splitlines()) == 1
    w.close()


def test_lines_queued_across_midnight_land_in_their_own_day(tmp_path):
    w = StatsWriter(config(tmp_path, "statistics peerstats"), FakeClock(JAN1))
    for t in (JAN1 - NS_PER_S, JAN1, JAN1 + NS_PER_S):
        w.peerstats(t, "127.127.22.0", 0x9714, 0.0, 0.0, 0.0, 0.0)
    w.flush()
    assert len((tmp_path / "peerstats.20251231").read_text().splitlines()) == 1
    assert len((tmp_path / "peerstats.20260101").read_text().splitlines()) == 2


def test_nolink_type_none_and_file_options(tmp_path):
    cfg = config(tmp_path, "statistics loopstats clockstats\n"
                           "filegen loopstats file loop type none\n"
                           "filegen clockstats type month nolink\n")
    w = StatsWriter(cfg, FakeClock(JAN1))
    w.loopstats(JAN1, 0.0, 0.0, 0.0, 0.0, 4)
    w.clockstats(JAN1, "127.127.20.0", "$GPRMC")
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clockstats.202601", "loop"]


def test_age_and_pid_generations(tmp_path):
    cfg = config(tmp_path, "statistics loopstats peerstats\n"
                           "filegen loopstats type age\nfilegen peerstats type pid\n")
    clock = FakeClock(JAN1)
    w = StatsWriter(cfg, clock, pid=lambda: 321)
    w.loopstats(JAN1 + 90_000 * NS_PER_S, 0.0, 0.0, 0.0, 0.0, 4)
    w.peerstats(JAN1, "127.127.1.0", 0, 0.0, 0.0, 0.0, 0.0)
    w.close()
    assert (tmp_path / "loopstats.a00086400").exists()
    assert (tmp_path / "peerstats.#321").exists()


def test_a_plain_file_in_the_links_place_is_kept(tmp_path):
    (tmp_path / "loopstats").write_text("old data\n")
    w = StatsWriter(config(tmp_path, "statistics loopstats"), FakeClock(JAN1), pid=lambda: 7)
    w.loopstats(JAN1, 0.0, 0.0, 0.0, 0.0, 4)
    w.close()
    assert (tmp_path / "loopstats.7C0").read_text() == "old data\n"
    assert os.path.samefile(tmp_path / "loopstats", tmp_path / "loopstats.20260101")


def test_disabled_files_and_disable_stats_write_nothing(tmp_path):
    w = StatsWriter(config(tmp_path, "filegen loopstats type day"), FakeClock(JAN1))
    assert w.loopstats(JAN1, 0.0, 0.0, 0.0, 0.0, 4) is None
    w2 = StatsWriter(config(tmp_path, "statistics loopstats\ndisable stats"), FakeClock(JAN1))
    assert w2.loopstats(JAN1, 0.0, 0.0, 0.0, 0.0, 4) is None
    w3 = StatsWriter(config(tmp_path, "filegen loopstats disable\nstatistics peerstats"),
                     FakeClock(JAN1))
    assert not w3.enabled("loopstats") and w3.enabled("peerstats")
    w.close(), w2.close(), w3.close()
    assert list(tmp_path.iterdir()) == []


def test_write_failure_is_logged_once_and_lines_are_kept(tmp_path, caplog):
    statsdir = tmp_path / "missing"
    w = StatsWriter(config(statsdir, "statistics loopstats"), FakeClock(JAN1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stratum1.stats"):
        for i in range(5):
            w.loopstats(JAN1 + i * NS_PER_S, 0.0, 0.0, 0.0, 0.0, 4)
            w.tick(JAN1 + i * NS_PER_S)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    statsdir.mkdir()
    w.tick(JAN1 + 10 * NS_PER_S)
    assert len((statsdir / "loopstats.20260101").read_text().splitlines()) == 5
    w.close()


def test_pending_lines_are_bounded(tmp_path):
    f = FileGeneration("loopstats", str(tmp_path / "missing"), enabled=True, max_pending=3)
    for i in range(5):
        f.append(JAN1, f"line {i}")
    assert f.pending == 3 and f.dropped == 2
    assert f.flush() is False


def test_reconfigure_keeps_unchanged_files_open_and_reopens_changed(tmp_path):
    clock = FakeClock(JAN1)
    w = StatsWriter(config(tmp_path, "statistics loopstats peerstats"), clock)
    w.loopstats(JAN1, 0.0, 0.0, 0.0, 0.0, 4)
    w.peerstats(JAN1, "127.127.1.0", 0, 0.0, 0.0, 0.0, 0.0)
    w.flush()
    peer_file = w.files["peerstats"]
    w.reconfigure(config(tmp_path, "statistics peerstats\nfilegen loopstats type none"))
    assert w.files["peerstats"] is peer_file
    assert not w.enabled("loopstats")
    w.close()


def test_hourly_sysstats_from_tick(tmp_path):
    clock = FakeClock(JAN1)
    w = StatsWriter(config(tmp_path, "statistics sysstats"), clock)
    totals = SysCounters(received=7, processed=7)
    for s in range(0, 7201, 1):
        w.tick(JAN1 + s * NS_PER_S, lambda: totals)
    lines = (tmp_path / "sysstats.20260101").read_text().splitlines()
    assert lines == ["61041 3600.000 3600 7 7 0 0 0 0 0 0 0 0",
                     "61041 7200.000 3600 0 0 0 0 0 0 0 0 0 0"]


def test_record_loop_writes_once_per_discipline_update():
    class Snap:
        offset = 2e-6

    class Disc:
        updates = 1
        jitter = 1e-7
        wander = 0.001
        poll = 5

        def frequency_ppm(self):
            return -3.25

    w = StatsWriter(config(Path("/nonexistent"), "statistics loopstats"), FakeClock(JAN1))
    d = Disc()
    assert w.record_loop(JAN1, Snap(), d) == "61041 0.000 0.000002000 -3.250000 0.000000100 0.001000 5"
    assert w.record_loop(JAN1 + NS_PER_S, Snap(), d) is None
    d.updates = 2
    assert w.record_loop(JAN1 + 2 * NS_PER_S, Snap(), d) is not None


def test_clockstats_sink_takes_ready_lines(tmp_path):
    w = StatsWriter(config(tmp_path, "statistics clockstats"), FakeClock(JAN1))
    w.clockstats_sink("61041 0.000 127.127.22.0 0.000000123")
    w.close()
    assert (tmp_path / "clockstats").read_text() == "61041 0.000 127.127.22.0 0.000000123\n"


# -- ntpviz ----------------------------------------------------------------------------------


def _simulate(statsdir: Path, start_ns: int, seconds: int) -> None:
    """The real core (associations, selection, discipline) on a simulated GPS+PPS, writing
    statistics the way the daemon does."""
    from stratum1.association import Association
    from stratum1.discipline import Discipline
    from stratum1.sample import LEAP_NONE
    from stratum1.sim.world import RefclockModel, World
    from stratum1.system import SystemProcess

    world = World(seed=3, start_ns=start_ns, offset=0.002, freq_ppm=12.0)
    clock = world.clock
    discipline = Discipline(clock)
    system = SystemProcess(precision=-20, discipline=discipline, poll=4, start_ns=clock.now_ns())
    models = [RefclockModel("NMEA", kind="nmea", latency=(0.1, 0.13), prefer=True),
              RefclockModel("PPS", kind="pps", jitter=2e-6)]
    assocs = []
    for n, (model, kind) in enumerate(zip(models, (20, 22), strict=True), start=1):
        a = Association(n, f"127.127.{kind}.0", refclock=True, refid=model.name.encode(),
                        minpoll=4, maxpoll=4, pps=model.kind == "pps", prefer=model.prefer)
        system.add(a)
        assocs.append((model, a))
    writer = StatsWriter(config(statsdir, "statistics loopstats peerstats clockstats"), clock)
    for sec in range(1, seconds + 1):
        clock.advance_to(start_ns + sec * NS_PER_S)
        now = clock.now_ns()
        for model, _ in assocs:
            model.sample(world, sec)
        if sec % 16:
            continue
        for model, a in assocs:
            got = model.measurement()
            if got is None:
                a.poll_missed(now)
            else:
                a.receive(got[0], now, leap=LEAP_NONE)
            writer.record_peer(now, a, address=a.name)
        writer.clockstats(now, "127.127.20.0", f"$GPRMC,{sec % 86400:06d},A")
        system.update(now)
        writer.record_loop(now, system.snapshot, discipline)
        writer.tick(now)
    writer.close()


@pytest.mark.skipif(shutil.which("ntpviz") is None or shutil.which("gnuplot") is None,
                    reason="needs ntpviz and gnuplot (Debian ntpsec-ntpviz)")
def test_ntpviz_draws_our_files(tmp_path):
    statsdir = tmp_path / "stats"
    statsdir.mkdir()
    hours = 2
    start_ns = (time.time_ns() // NS_PER_S - (hours + 1) * 3600) * NS_PER_S
    _simulate(statsdir, start_ns, hours * 3600)
    loop = (statsdir / "loopstats").read_text().splitlines()
    assert len(loop) > 100
    offsets = [float(line.split()[2]) for line in loop]
    assert all(math.isfinite(o) for o in offsets)
    out = tmp_path / "out"
    start_s = start_ns // NS_PER_S
    proc = subprocess.run(
        ["ntpviz", "-d", str(statsdir), "-o", str(out), "-g", "-n", "stratum1-test",
         "-s", str(start_s), "-e", str(start_s + (hours + 1) * 3600)],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    made = {p.name for p in out.iterdir()}
    for plot in ("local-offset.png", "local-jitter.png", "peer-offsets.png",
                 "peer-offset-127.127.22.0.png", "peer-jitter-127.127.20.0.png"):
        assert plot in made, (plot, sorted(made), proc.stderr)
        assert (out / plot).stat().st_size > 2000
    html = (out / "index.html").read_text()
    assert "127.127.22.0" in html or "REFCLOCK(type=22,unit=0)" in html
