"""ntpsec's real ``ntpq`` (and ``ntpstat``) against our mode-6 control protocol over loopback.

Three harnesses: the server with a fixed, fake daemon state (exact values to check), the real
daemon core (Daemon + LOCAL refclock) built in-process with the control wired by the test, and
the daemon as a subprocess (runs once the daemon wires the control itself).
Addresses 127.0.0.40-49 port 123 (ntpq only speaks to port 123).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from interop_support import LOCAL_CONF, find_tool, ntp_query, port_free, run_tool

from stratum1.association import SEL_CANDIDATE, SEL_PPSPEER, Association
from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.control import Control
from stratum1.controlvars import DaemonView
from stratum1.eventloop import EventLoop
from stratum1.mrulist import MruEntry, MruList
from stratum1.sample import Measurement
from stratum1.server import NtpServer
from stratum1.snapshot import SystemSnapshot

S = 1_000_000_000
_taken: set[str] = set()


def our_host() -> str:
    """A free 127.0.0.N:123 with N in 40..49 (the range this file may use)."""
    for n in range(40, 50):
        host = f"127.0.0.{n}"
        if host not in _taken and port_free(host, 123):
            _taken.add(host)
            return host
    pytest.skip("127.0.0.40-49: UDP port 123 busy on all of them")


def ntpq(*args: str, timeout: float = 30.0) -> str:
    exe = find_tool("ntpq", "ntpsec")
    result = run_tool([exe, *args], timeout=timeout)
    return result.stdout + result.stderr


class LoopThread:
    """Runs an EventLoop in a thread, bounded in time; stop() joins it."""

    def __init__(self, loop: EventLoop, limit_s: float = 120.0) -> None:
        self.loop = loop
        until = loop.now_ns() + int(limit_s * S)
        self.thread = threading.Thread(target=loop.run, kwargs={"until_ns": until}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(10)


# -- harness 1: a fixed daemon state --------------------------------------------------------------


class FakeUnit:
    def __init__(self, type_: int, name: str, refid: str, description: str) -> None:
        self.address = f"127.127.{type_}.0"
        self.name = f"{name}(0)"
        self.config = SimpleNamespace(type=type_, unit=0)
        self.driver_cls = SimpleNamespace(description=description)
        self.refid = refid

    def status(self, now_ns=None):  # type: ignore[no-untyped-def]
        return {"type": self.config.type, "poll": 120, "noreply": 1, "badformat": 2,
                "baddata": 0, "fudgetime1": 0.0, "fudgetime2": 0.412, "stratum": 0,
                "refid": self.refid, "flags": 1, "event": 0,
                "timecode": "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,,*6A",
                "driver_status": {"sentences": 1234}}


def _refclock(assoc_id: int, address: str, refid: bytes, offset: float, now: int,
              pps: bool = False) -> Association:
    a = Association(assoc_id, address, refclock=True, stratum=0, refid=refid, precision=-9,
                    minpoll=4, maxpoll=4, pps=pps)
    for k in range(8):
        t = now - (8 - k) * 16 * S
        a.receive(Measurement(offset=offset, delay=0.0, dispersion=1e-4, local_ns=t,
                              jitter=1e-5, leap=0), t)
    return a


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, Control]]:
    clock = SystemClock()
    now = clock.now_ns()
    gps = _refclock(1, "127.127.20.0", b"GPS", 0.0123, now)
    pps = _refclock(2, "127.127.22.0", b"PPS", 1.5e-6, now, pps=True)
    gps.set_select_code(SEL_CANDIDATE)
    pps.set_select_code(SEL_PPSPEER)
    snap = SystemSnapshot(leap=0, stratum=1, precision=-22, poll=4, root_dispersion=0.0012,
                          refid=b"PPS\0", reference_ns=now - 3 * S, offset=1.5e-6, jitter=3e-7,
                          system_peer_id=2)
    daemon = SimpleNamespace(
        snapshot=snap,
        system=SimpleNamespace(associations=[gps, pps], discipline=None),
        sources=[SimpleNamespace(association=gps,
                                 unit=FakeUnit(20, "GPS_NMEA", "GPS", "NMEA GPS receiver")),
                 SimpleNamespace(association=pps,
                                 unit=FakeUnit(22, "PPS", "PPS", "PPS via the kernel"))],
        clock=clock,
        servers=[],
    )
    clients = [MruEntry("192.0.2.10", 40000 + i, now - 600 * S, now - (20 + i) * S, 10 + i)
               for i in range(3)]
    clients.append(MruEntry("2001:db8::7", 123, now - 60 * S, now - 5 * S, 4, mode=3, version=3))
    control = Control(DaemonView(daemon), mru=MruList(lambda: clients))
    host = our_host()
    loop = EventLoop()
    server = NtpServer((host, 123), lambda: snap, clock, control_handler=control.handle)
    server.attach(loop)
    runner = LoopThread(loop)
    try:
        yield host, control
    finally:
        runner.stop()
        server.close()
        loop.close()


def test_ntpq_peers_lists_refclocks_with_tally_codes(fake_server):
    host, _control = fake_server
    for flag in ("-p", "-pn"):
        out = ntpq(flag, host)
        lines = [line for line in out.splitlines() if line.startswith(("+", "o"))]
        assert len(lines) == 2, out
        gps, pps = (line.split() for line in lines)
        assert gps[:6] == ["+GPS_NMEA(0)", ".GPS.", "0", "l", gps[4], "16"], out
        assert gps[6] == "377" and float(gps[8]) == pytest.approx(12.3), out
        assert pps[:4] == ["oPPS(0)", ".PPS.", "0", "l"], out
        assert float(pps[8]) == pytest.approx(0.0015, abs=1e-4), out


def test_ntpq_rv_system_variables(fake_server):
    host, _control = fake_server
    out = ntpq("-c", "rv", host)
    assert "leap_none, sync_pps" in out, out
    values = dict(re.findall(r"(\w+)=([^,\s]+)", out))
    assert values["stratum"] == "1" and values["refid"] == "PPS" and values["peer"] == "2", out
    assert values["leap"] == "00" and values["precision"] == "-22", out
    assert values["version"].startswith('"stratum1'), out


def test_ntpq_associations(fake_server):
    host, _control = fake_server
    out = ntpq("-c", "as", host)
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+[0-9a-f]{4}",
                                                                    line)]
    assert [r[:5] for r in rows] == [["1", "1", "9414", "yes", "yes"],
                                     ["2", "2", "971a", "yes", "yes"]], out
    assert "candidate" in rows[0] and "pps.peer" in rows[1], out


def test_ntpq_rv_association(fake_server):
    host, _control = fake_server
    out = ntpq("-c", "rv &1", host)
    assert "sel_candidate" in out, out
    values = dict(re.findall(r"(\w+)=([^,\s]+)", out))
    assert values["srcadr"] == "127.127.20.0" and values["srchost"] == '"GPS_NMEA(0)"', out
    assert values["reach"] == "377" and values["hpoll"] == "4" and values["refid"] == "GPS", out
    assert "filtoffset" in out, out
    out = ntpq("-c", "rv 2 refid,offset", host)
    assert "refid=PPS" in out and "offset=0.0015" in out, out


def test_ntpq_clock_variables(fake_server):
    host, _control = fake_server
    out = ntpq("-c", "cv &1", host)
    assert 'device="NMEA GPS receiver"' in out, out
    assert 'timecode="$GPRMC,123519,A' in out and "fudgetime2=412.0" in out, out
    assert "sentences=1234" in out and "noreply=1" in out, out


def test_ntpq_unknown_variable_and_association(fake_server):
    host, _control = fake_server
    assert "Unknown associd" in ntpq("-c", "rv 99", host)
    out = ntpq("-c", "rv 0 nosuchvar", host)
    assert "unknown" in out.lower(), out


def test_ntpq_mrulist(fake_server):
    host, _control = fake_server
    out = ntpq("-n", "-c", "mrulist", host)
    assert "192.0.2.10" in out and "2001:db8::7" in out, out
    rows = [line.split() for line in out.splitlines() if "192.0.2.10" in line]
    assert sorted(int(r[6]) for r in rows) == [10, 11, 12], out  # the count column
    assert "Collected 4 slots" in out, out


def test_noquery_host_gets_no_answer():
    clock = SystemClock()
    snap = SystemSnapshot()
    daemon = SimpleNamespace(snapshot=snap, system=SimpleNamespace(associations=[]),
                             sources=[], clock=clock, servers=[])
    control = Control(DaemonView(daemon), may_query=lambda address: False)
    host = our_host()
    loop = EventLoop()
    server = NtpServer((host, 123), lambda: snap, clock, control_handler=control.handle)
    server.attach(loop)
    runner = LoopThread(loop, 30)
    try:
        out = ntpq("-c", "timeout 300", "-c", "rv", host)
    finally:
        runner.stop()
        server.close()
        loop.close()
    assert "timed out" in out.lower(), out
    assert control.stats.denied >= 1 and control.stats.answered == 0


# -- harness 2: the real daemon core, control wired by the test -----------------------------------


@pytest.fixture(scope="module")
def core_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    from stratum1.config.parser import parse_text
    from stratum1.daemon import Daemon, RunOptions

    config, diagnostics = parse_text(LOCAL_CONF, "<interop>")
    assert not [d for d in diagnostics if d.severity == "error"], diagnostics
    host = our_host()
    opts = RunOptions(listen=[(host, 123)], no_discipline=True)
    daemon = Daemon(config, opts, FrozenDisciplineClock(SystemClock()))
    daemon.loop.add_signal_handler = lambda *_args: None  # type: ignore[method-assign]
    daemon.start()
    for server in daemon.servers:
        server.control_handler = Control(DaemonView(daemon)).handle
    runner = LoopThread(daemon.loop)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if ntp_query(host, 123, timeout=0.5).leap != 3:
                    break
            except TimeoutError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the in-process daemon did not synchronise to LOCAL within 30 s")
        yield host, daemon
    finally:
        runner.stop()
        daemon.close()


def test_core_daemon_peers_and_system(core_daemon):
    host, _daemon = core_daemon
    out = ntpq("-pn", host)
    row = [line for line in out.splitlines() if "LOCAL(0)" in line]
    assert row and row[0].startswith("*LOCAL(0)"), out
    fields = row[0].split()
    assert fields[1:4] == [".LOCL.", "10", "l"], out
    out = ntpq("-c", "rv 0 stratum,refid,leap", host)
    values = dict(re.findall(r"(\w+)=([^,\s]+)", out))
    assert values == {"stratum": "11", "refid": "LOCL", "leap": "00"}, out
    out = ntpq("-c", "rv", host)
    assert "sync_local" in out and "clock_sync" in out, out


def test_core_daemon_associations_and_clock(core_daemon):
    host, _daemon = core_daemon
    out = ntpq("-c", "as", host)
    assert re.search(r"\s1\s+1\s+96[0-9a-f]{2}\s+yes\s+yes\s+none\s+sys.peer", out), out
    out = ntpq("-c", "cv &1", host)
    assert "device=" in out and "noreply=" in out and "refid=LOCL" in out, out
    assert "stratum=10" in out, out


def test_core_daemon_sysstats_and_status_uptime(core_daemon, capsys):
    host, daemon = core_daemon
    ntp_query(host, 123)  # one client request, so the counters have something to count
    out = ntpq("-c", "sysstats", host)
    assert "???" not in out and "Unknown variable" not in out, out
    assert re.search(r"^uptime:\s+\d+", out, re.M), out
    received = re.search(r"^packets received:\s+(\d+)\s+(\d+)", out, re.M)
    assert received and int(received.group(2)) >= 1, out

    from stratum1.cli import main

    assert main(["status", host]) == 0
    text = capsys.readouterr().out
    assert "uptime" in text and "unknown" not in text.split("uptime", 1)[1].splitlines()[0], text


# -- harness 3: the daemon as a subprocess --------------------------------------------------------


def test_daemon_subprocess_answers_ntpq(start_daemon):
    host = our_host()
    daemon = start_daemon(LOCAL_CONF, listen=f"{host}:123", name="ntpq-control")
    daemon.wait_for_reply(host, 123, timeout=30.0)
    out = ntpq("-c", "timeout 500", "-c", "rv 0 stratum,refid", host)
    if "timed out" in out.lower():
        pytest.skip("the daemon does not answer mode 6 yet (control not wired in daemon.py)")
    assert "stratum=11" in out and "refid=LOCL" in out, out
    out = ntpq("-pn", host)
    assert re.search(r"^\*LOCAL\(0\)\s+\.LOCL\.\s+10 l", out, re.M), out


def test_ntpstat_reads_the_system_status():
    """ntpstat only talks to 127.0.0.1:123, so it runs only when that is free."""
    exe = find_tool("ntpstat", "ntpstat")
    if not port_free("127.0.0.1", 123):
        pytest.skip("127.0.0.1:123 is in use (ntpstat cannot be pointed elsewhere)")
    clock = SystemClock()
    now = clock.now_ns()
    gps = _refclock(1, "127.127.20.0", b"GPS", 1e-4, now)
    snap = SystemSnapshot(leap=0, stratum=1, precision=-20, poll=4, root_dispersion=0.0012,
                          refid=b"GPS\0", reference_ns=now - S, system_peer_id=1)
    daemon = SimpleNamespace(snapshot=snap, system=SimpleNamespace(associations=[gps]),
                             sources=[SimpleNamespace(association=gps, unit=FakeUnit(
                                 20, "GPS_NMEA", "GPS", "NMEA"))], clock=clock, servers=[])
    loop = EventLoop()
    server = NtpServer(("127.0.0.1", 123), lambda: snap, clock,
                       control_handler=Control(DaemonView(daemon)).handle)
    server.attach(loop)
    runner = LoopThread(loop, 30)
    try:
        result = run_tool([exe], timeout=30)
    finally:
        runner.stop()
        server.close()
        loop.close()
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "synchronised to" in out and "stratum 1" in out, out
    assert "polling server every 16 s" in out, out
