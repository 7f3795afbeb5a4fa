"""Tests for stratum1/driverslist.py: the report from the configuration, from unit status, from
a mode-6 server in-process, and from a real daemon (with ntpsec's ntpq reading the same)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from stratum1.association import Association
from stratum1.config.parser import parse_text
from stratum1.control import Control, format_items
from stratum1.controlvars import DaemonView, clock_variables
from stratum1.driverslist import build_report, main, query_daemon, render, unit_from_variables
from stratum1.refclock.backoff import Backoff
from stratum1.refclock.discover import DeviceRecord
from stratum1.refclock.presence import Prober
from stratum1.refclock.testing import VirtualClock, VirtualLoop
from stratum1.refclock.unit import RefclockUnit
from stratum1.snapshot import UNSYNCHRONIZED
from stratum1.status import parse_values

CONF = """\
server 127.127.1.0
fudge 127.127.1.0 stratum 10
server 127.127.99.0
fudge 127.127.99.0 flag1 1
refclock nmea unit 0 path {dev}/gps0 baud 9600
refclock pps unit 1 path {dev}/pps1
"""


def setup(tmp_path):
    (tmp_path / "gps0").touch()
    config, diags = parse_text(CONF.format(dev=tmp_path), "ntp.conf")
    assert not [d for d in diags if d.severity == "error"], diags
    prober = Prober(dev=str(tmp_path), proc=str(tmp_path), find_spec=lambda n: object())
    records = lambda: [DeviceRecord("pps", "/dev/pps0", label="pps-gpio.-1")]  # noqa: E731
    return config, prober, records


def test_table_from_config(tmp_path):
    config, prober, records = setup(tmp_path)
    text = render(config, None, False, prober=prober, records=records)
    assert text.startswith("Drivers\n")
    lines = text.splitlines()
    local = next(line for line in lines if line.split()[:2] == ["1", "local"])
    assert "LOCL" in local and "nothing needed" in local
    assert "daemon not running" in text
    gps = next(line for line in lines if line.strip().startswith("GPS_NMEA(0)"))
    assert f"{tmp_path}/gps0" in gps and " yes " in gps and "ntp.conf:5" in gps
    pps = next(line for line in lines if line.strip().startswith("PPS(1)"))
    assert " NO " in pps
    # the candidate PPS gets a unit number the configuration does not use yet
    assert "refclock pps unit 0 path /dev/pps0" in text


def test_json_from_config(tmp_path):
    config, prober, records = setup(tmp_path)
    data = json.loads(render(config, None, True, prober=prober, records=records))
    assert data["source"] == "config"
    assert [d["name"] for d in data["drivers"]][:1] == ["local"]
    assert {u["address"] for u in data["units"]} == {
        "127.127.1.0", "127.127.99.0", "127.127.20.0", "127.127.22.1"
    }
    assert data["candidates"][0]["kind"] == "pps"


def test_live_units(tmp_path):
    config, prober, records = setup(tmp_path)
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    units = [RefclockUnit(rc, loop, clock) for rc in config.refclocks if rc.type in (1, 99)]
    for u in units:
        u.start()
    loop.advance(16)
    for u in units:
        u.poll(clock.now_ns())
    live = [u.status() for u in units]
    text = render(config, live, False, prober=prober, records=records)
    assert "Units (live)" in text
    sim = next(line for line in text.splitlines() if line.strip().startswith("SIM(0)"))
    assert sim.split()[3] == "open" and sim.split()[7] == "1"  # reach 1 (octal)
    data = build_report(config, live, prober=prober, records=records)
    assert data["source"] == "daemon" and data["units"][1]["samples"] >= 16


def test_discovery_failure_does_not_break_the_report(tmp_path):
    config, prober, _ = setup(tmp_path)

    def broken():
        raise OSError("no udev")

    text = render(None, None, False, prober=prober, records=broken)
    assert "device discovery failed: no udev" in text and "(no refclocks configured)" in text


def test_main_with_config_errors_returns_1(tmp_path, capsys):
    conf = tmp_path / "bad.conf"
    conf.write_text("server 127.127.250.0\n")
    assert main(str(conf), True) == 1
    out, err = capsys.readouterr()
    assert "bad.conf:1" in err
    json.loads(out)


# -- the live daemon over mode 6 --------------------------------------------------------------

LIVE_CONF = """\
refclock sim unit 0 flag1 1
server 127.127.1.0
fudge 127.127.1.0 stratum 10
refclock nmea unit 3 path {missing}
"""


def _running_units(tmp_path):
    config, diags = parse_text(LIVE_CONF.format(missing=tmp_path / "nope"), "ntp.conf")
    assert not [d for d in diags if d.severity == "error"], diags
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    units = [RefclockUnit(rc, loop, clock, backoff=Backoff(initial=30, maximum=60))
             for rc in config.refclocks]
    for u in units:
        u.start()
    loop.advance(16)
    for u in units:
        u.poll(clock.now_ns())
    return config, units, clock


def test_unit_from_its_clock_variables(tmp_path):
    _config, units, clock = _running_units(tmp_path)
    for unit in units:
        status = unit.status(clock.now_ns())
        wire = format_items(clock_variables(status).defaults)
        got = unit_from_variables({"srcadr": unit.address}, parse_values(wire))
        for key in ("address", "name", "driver", "device", "state", "reach", "samples",
                    "pulses", "faults", "noreply", "last_fault"):
            assert got[key] == (status[key] or got[key] if key == "device" else status[key]), key
        if status["offset"] is None:
            assert got["offset"] is None and got["last_sample_age"] is None
        else:
            assert got["offset"] == pytest.approx(status["offset"], abs=1e-9)
            assert got["last_sample_age"] == pytest.approx(status["last_sample_age"], abs=1e-3)
    assert units[-1].status()["state"] == "fault"
    status = {**units[-1].status(), "last_fault": 'read error, "x"=1'}
    wire = format_items(clock_variables(status).defaults)
    assert unit_from_variables({}, parse_values(wire))["last_fault"] == "read error, ?x?=1"


def test_unit_from_an_ntpd_without_our_variables():
    peer = {"srcadr": "127.127.20.0", "srchost": "GPS_NMEA(0)", "reach": "0377",
            "offset": "-1.250", "jitter": "0.500"}
    clock = {"device": "NMEA GPS Clock", "noreply": "2", "badformat": "3", "baddata": "1"}
    got = unit_from_variables(peer, clock)
    assert unit_from_variables({**peer, "reach": "0xff"}, clock)["reach"] == 0o377
    assert (got["name"], got["address"], got["reach"], got["errors"]) == (
        "GPS_NMEA(0)", "127.127.20.0", 0o377, 4)
    assert got["offset"] == pytest.approx(-0.00125) and got["jitter"] == pytest.approx(0.0005)
    assert got["state"] is None and got["opened"] is None and got["noreply"] == 2


class Mode6Server:
    """``stratum1.control.Control`` over a fake daemon with real units, on a loopback port."""

    def __init__(self, units, clock, host="127.0.0.74"):
        assocs, sources = [], []
        for i, unit in enumerate(units, start=1):
            a = Association(i, unit.address, refclock=True, stratum=0, refid=b"SIM", precision=-9,
                            minpoll=4, maxpoll=4)
            assocs.append(a)
            sources.append(SimpleNamespace(association=a, unit=unit))
        # a network server too: drivers list must skip it
        assocs.append(Association(len(assocs) + 1, "192.0.2.1", refclock=False, stratum=2,
                                  minpoll=6, maxpoll=10))
        daemon = SimpleNamespace(snapshot=UNSYNCHRONIZED, system=SimpleNamespace(
            associations=assocs, discipline=None), sources=sources, clock=clock, servers=[])
        self.control = Control(DaemonView(daemon))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.requests += 1
            for reply in self.control.respond(data, peer):
                self.sock.sendto(reply, peer)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_query_daemon_reads_each_refclock_and_skips_servers(tmp_path):
    _config, units, clock = _running_units(tmp_path)
    with Mode6Server(units, clock) as server:
        live, error = query_daemon(server.address, timeout=2.0)
    assert error is None and live is not None
    assert [u["name"] for u in live] == ["SIM(0)", "LOCAL(0)", "GPS_NMEA(3)"]
    sim, local, nmea = live
    assert sim["state"] == "open" and sim["reach"] == 1 and sim["samples"] >= 16 and sim["pps"]
    assert local["driver"] == "local" and local["offset"] == 0.0
    assert nmea["state"] == "fault" and "cannot open" in nmea["last_fault"]
    assert nmea["device"] == str(tmp_path / "nope") and 0 < nmea["retry_in"] <= 30


def test_live_notes_for_pps_trouble_and_measured_time2(tmp_path):
    config, prober, records = setup(tmp_path)
    base = {"address": "127.127.20.0", "name": "GPS_NMEA(0)", "state": "open", "reach": 255,
            "samples": 10, "pulses": 0, "errors": 0}
    live = [{**base, "time2_suggested": 0.137, "pps_device": "/dev/gpspps0",
             "pps_error": "PPS on DCD unavailable: no pps_ldisc"},
            {**base, "address": "127.127.20.1", "name": "GPS_NMEA(1)", "pps_device": "/dev/pps1",
             "pps_error": "permission denied"}]
    text = render(config, live, False, prober=prober, records=records)
    assert "  GPS_NMEA(0): PPS on DCD unavailable: no pps_ldisc\n" in text
    assert "  GPS_NMEA(0): the PPS edge measures the sentence delay: fudge 127.127.20.0 time2 0.1370" in text
    assert "  GPS_NMEA(1): PPS /dev/pps1: permission denied\n" in text


def test_main_renders_the_live_daemon(tmp_path, capsys):
    config, units, clock = _running_units(tmp_path)
    conf = tmp_path / "ntp.conf"
    conf.write_text(LIVE_CONF.format(missing=tmp_path / "nope"))
    with Mode6Server(units, clock) as server:
        assert main(str(conf), False, host=server.address) == 0
        text = capsys.readouterr().out
        assert main(str(conf), True, host=server.address) == 0
        data = json.loads(capsys.readouterr().out)
    assert f"Units (live, from the daemon at {server.address})" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.startswith("  ") and "(" in line.split()[0]}
    assert rows["SIM(0)"][3] == "open" and rows["SIM(0)"][7] == "1"
    assert rows["GPS_NMEA(3)"][3] == "fault" and "(retry in" in " ".join(rows["GPS_NMEA(3)"])
    assert data["source"] == "daemon" and data["daemon"] == {"host": server.address, "error": None}
    assert [u["state"] for u in data["units"]] == ["open", "open", "fault"]
    assert [u["location"] for u in data["units"]] == [f"{conf}:1", f"{conf}:2", f"{conf}:4"]


def test_no_daemon_falls_back_to_the_config_quickly(tmp_path, capsys):
    conf = tmp_path / "ntp.conf"
    conf.write_text(LIVE_CONF.format(missing=tmp_path / "nope"))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.75", 0))
    closed = f"127.0.0.75:{probe.getsockname()[1]}"
    probe.close()
    start = time.monotonic()
    assert main(str(conf), True, host=closed) == 0
    data = json.loads(capsys.readouterr().out)
    assert time.monotonic() - start < 5  # refused at once, not a timeout per unit
    assert data["source"] == "config" and "refused" in data["daemon"]["error"]
    assert [u["state"] for u in data["units"]] == ["not running"] * 3
    assert main(str(conf), False, host=closed) == 0
    assert "daemon not running: cannot query" in capsys.readouterr().out


def test_silent_daemon_times_out_and_bad_addresses_are_refused():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.75", 0))
    try:
        start = time.monotonic()
        live, error = query_daemon(f"127.0.0.75:{silent.getsockname()[1]}", timeout=0.3)
        assert live is None and error.startswith("no answer from 127.0.0.75:")
        assert time.monotonic() - start < 2
    finally:
        silent.close()
    for bad in ("127.0.0.1:notaport", "127.0.0.1:70000", "127.0.0.1:0"):
        live, error = query_daemon(bad)
        assert live is None and "bad daemon address" in error


# -- a real daemon, and ntpsec's ntpq beside it --------------------------------------------------
DAEMON_HOST = "127.0.0.72"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    conf = tmp / "ntp.conf"
    conf.write_text(LIVE_CONF.format(missing=tmp / "nope"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stratum1", "run", "-n", "--no-discipline",
         "--listen", f"{DAEMON_HOST}:123", "-c", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp,
    )
    try:
        deadline = time.monotonic() + 20
        live = None
        while time.monotonic() < deadline and proc.poll() is None:
            live, _error = query_daemon(DAEMON_HOST, timeout=0.5)
            if live and any(u["reach"] for u in live):
                break
            time.sleep(0.3)
        if proc.poll() is not None or not live:
            out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
            pytest.skip(f"daemon did not come up on {DAEMON_HOST}:123 {out[-400:]}")
        yield conf
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_drivers_list_against_a_real_daemon(daemon, capsys):
    assert main(str(daemon), True, host=DAEMON_HOST) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "daemon"
    units = {u["name"]: u for u in data["units"]}
    assert set(units) == {"SIM(0)", "LOCAL(0)", "GPS_NMEA(3)"}
    assert units["SIM(0)"]["state"] == "open" and units["SIM(0)"]["samples"] > 0
    assert units["SIM(0)"]["last_sample_age"] < 5
    assert units["GPS_NMEA(3)"]["state"] == "fault"
    assert str(daemon.parent / "nope") in units["GPS_NMEA(3)"]["last_fault"]
    # the command line itself, as a user runs it
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from stratum1.driverslist import main;"
                          f"sys.exit(main({str(daemon)!r}, False, host={DAEMON_HOST!r}))"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"Units (live, from the daemon at {DAEMON_HOST})" in out.stdout


@pytest.mark.skipif(shutil.which("ntpq") is None, reason="needs ntpq (Debian package ntpsec)")
def test_ntpsec_ntpq_prints_the_clock_variables(daemon):
    out = subprocess.run(["ntpq", "-c", "cv &1", "-c", "cv &3", DAEMON_HOST],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "LC_ALL": "C"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "***" not in text and "error" not in out.stderr.lower(), (text, out.stderr)
    assert 'device="Simulated' in text and "s1_state=\"open\"" in text
    assert "s1_state=\"fault\"" in text and "s1_fault=" in text and "s1_retry_in=" in text
    assert Path(shutil.which("ntpq")).exists()
