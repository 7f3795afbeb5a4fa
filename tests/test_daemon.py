"""Tests for stratum1/daemon.py: options, start-up, serving from a LOCAL source, reload."""

import time

import daemon_harness
import pytest

from stratum1.cli import build_parser
from stratum1.daemon import load_config, options_from_args, parse_listen
from stratum1.query import query

LOCAL_CONF = daemon_harness.LOCAL_CONF


def test_parse_listen():
    assert parse_listen("127.0.0.1:123") == ("127.0.0.1", 123)
    assert parse_listen("[::1]:11123") == ("::1", 11123)
    for bad in ("127.0.0.1", "host:port", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_demo_options_never_discipline_and_listen_on_loopback():
    opts = options_from_args(build_parser().parse_args(["run", "--demo"]))
    assert opts.no_discipline and opts.demo
    assert opts.listen == [("127.0.0.1", 11123)]
    config = load_config(opts)
    assert [r.driver for r in config.refclocks] == ["sim"]


def test_command_line_overrides_config_files(tmp_path):
    conf = tmp_path / "ntp.conf"
    conf.write_text(LOCAL_CONF + "driftfile /var/lib/x/drift\n")
    args = build_parser().parse_args(["run", "-c", str(conf), "-f", str(tmp_path / "drift")])
    config = load_config(options_from_args(args))
    assert config.driftfile == str(tmp_path / "drift")


def _start(tmp_path, monkeypatch, text=LOCAL_CONF):
    return daemon_harness.start(tmp_path, monkeypatch, text)


_stop = daemon_harness.stop
_start_with = daemon_harness.start


def _wait_synchronised(address, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = query(address[0], address[1], timeout=0.5)
        if r.leap != 3:
            return r
        time.sleep(0.05)
    raise AssertionError("daemon never synchronised")


def test_serves_local_clock_at_fudged_stratum_plus_one(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="stratum1")
    d, thread, _ = _start(tmp_path, monkeypatch)
    try:
        address = d.servers[0].address
        r = _wait_synchronised(address)
        assert r.stratum == 11
        assert r.refid == "LOCL"
        assert abs(r.offset) < 0.001
    finally:
        _stop(d, thread)
    # One line per state change, never one per poll or packet.
    assert caplog.text.count("127.127.1.0 reachable") == 1
    assert caplog.text.count("synchronised to 127.127.1.0") == 1


def test_reload_with_errors_keeps_running_config(tmp_path, monkeypatch, caplog):
    d, thread, conf = _start(tmp_path, monkeypatch)
    try:
        _wait_synchronised(d.servers[0].address)
        before = d.config
        conf.write_text(LOCAL_CONF + "bogusdirective 1\nfudge 127.127.1.0 time9 3\n")
        d.reload()
        assert d.config is before
        assert "keeping the running configuration" in caplog.text
        assert query(*d.servers[0].address[:2], timeout=1.0).stratum == 11
        conf.write_text("server 127.127.1.0\nfudge 127.127.1.0 stratum 7\n")
        d.reload()
        assert d.config is not before
        assert d.config.refclocks[0].stratum == 7
    finally:
        _stop(d, thread)


def test_refuses_to_start_on_config_errors(tmp_path, capsys):
    from stratum1.cli import main

    conf = tmp_path / "ntp.conf"
    conf.write_text("server 127.127.1.0\nfudge 127.127.1.0 stratum 99\nfrobnicate\n")
    assert main(["run", "-n", "--no-discipline", "-c", str(conf), "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:2" in err and f"{conf}:3" in err
    assert "not starting" in err


def _ntp_seconds(unix_s: int) -> int:
    return unix_s + 2_208_988_800


def test_leapfile_announces_a_coming_leap_in_served_packets(tmp_path, monkeypatch):
    from stratum1.leapfile import format_leapfile

    now = int(time.time())
    # A leap at the next midnight UTC, 37 -> 38 s: within the 28-day warning window.
    leap_at = (now // 86400 + 1) * 86400
    text = format_leapfile(
        [(_ntp_seconds(0), 37), (_ntp_seconds(leap_at), 38)],
        updated=_ntp_seconds(now - 86400),
        expires=_ntp_seconds(now + 200 * 86400),
    )
    (tmp_path / "leap-seconds.list").write_text(text)
    conf = LOCAL_CONF + f"leapfile {tmp_path / 'leap-seconds.list'}\n"
    d, thread, _ = _start(tmp_path, monkeypatch, conf)
    try:
        deadline = time.monotonic() + 10
        r = None
        while time.monotonic() < deadline:
            r = query(*d.servers[0].address[:2], timeout=0.5)
            if r.leap == 1:
                break
            time.sleep(0.1)
        assert r is not None and r.leap == 1 and r.stratum == 11
    finally:
        _stop(d, thread)


def test_drift_file_sets_the_initial_frequency(tmp_path, monkeypatch):
    drift = tmp_path / "drift"
    drift.write_text("12.345\n")
    d, thread, _ = _start(tmp_path, monkeypatch, LOCAL_CONF + f"driftfile {drift}\n")
    try:
        assert d.discipline.frequency_ppm() == pytest.approx(12.345)
        assert drift.read_text() == "12.345\n"  # --no-discipline never rewrites it
    finally:
        _stop(d, thread)


def test_corrupt_drift_file_is_ignored_and_kept(tmp_path, monkeypatch, caplog):
    drift = tmp_path / "drift"
    drift.write_text("not a number\n")
    d, thread, _ = _start(tmp_path, monkeypatch, LOCAL_CONF + f"driftfile {drift}\n")
    try:
        assert d.discipline.frequency_ppm() == 0.0
        assert drift.read_text() == "not a number\n"
    finally:
        _stop(d, thread)


def test_tells_systemd_when_ready_and_when_synchronised(tmp_path, monkeypatch):
    import socket

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    d, thread, _ = _start(tmp_path, monkeypatch)
    try:
        first = sock.recv(1024).decode()
        assert first.startswith("READY=1\nSTATUS=serving on 1 socket(s)")
        second = sock.recv(1024).decode()
        assert second.startswith("STATUS=synchronised to 127.127.1.0, stratum 11")
    finally:
        _stop(d, thread)
        sock.close()


def test_statistics_files_and_metrics_endpoint(tmp_path, monkeypatch):
    import urllib.request

    pytest.importorskip("prometheus_client", reason="pip package prometheus-client")
    stats = tmp_path / "stats"
    stats.mkdir()
    d, thread, _ = _start_with(
        tmp_path,
        monkeypatch,
        LOCAL_CONF + f"statsdir {stats}/\nstatistics loopstats peerstats clockstats sysstats\n"
        "filegen peerstats type none enable\n",
        ("--metrics", "127.0.0.1:0"),
    )
    try:
        _wait_synchronised(d.servers[0].address)
        host, port = d.metrics.bound_address[:2]
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=3).read().decode()
        assert "stratum1_system_synchronized 1.0" in text
        d.stats.flush()
        peer_lines = (stats / "peerstats").read_text().splitlines()
        assert peer_lines and peer_lines[0].split()[2] == "127.127.1.0"
    finally:
        _stop(d, thread)


def test_workers_option_needs_listen():
    args = build_parser().parse_args(["run", "--workers", "2"])
    with pytest.raises(ValueError, match="--listen"):
        options_from_args(args)


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workers_answer_clients_and_forward_control_requests(tmp_path):
    """--workers 2: three processes share the port; every client and every mode-6 request is
    answered whichever process the kernel hands it to, and stopping the daemon ends them all."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys

    conf = tmp_path / "ntp.conf"
    conf.write_text(LOCAL_CONF)
    port = _free_udp_port()
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stratum1", "run", "-n", "--no-discipline", "-c", str(conf),
         "--listen", f"127.0.0.1:{port}", "--workers", "2", "-l", str(log)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if query("127.0.0.1", port, timeout=0.5).stratum == 11:
                    break
            except (TimeoutError, OSError):
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the daemon never synchronised to its LOCAL clock")
        time.sleep(0.3)  # the workers take the new snapshot within SNAPSHOT_POLL_S
        strata = set()
        for _ in range(24):  # fresh source ports: the kernel spreads them over the group
            strata.add(query("127.0.0.1", port, timeout=1.0).stratum)
        assert strata == {11}
        for _ in range(24):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.sendto(bytes([0x16, 0x01, 0, 1]) + bytes(8), ("127.0.0.1", port))
                answer = s.recv(600)
            assert answer[1] & 0x80 and answer[1] & 0x1F == 1  # a read-status response
        match = re.search(r"SO_REUSEPORT workers \(pids ([\d, ]+)\)", log.read_text())
        assert match, log.read_text()
        pids = [int(p) for p in match.group(1).split(",")]
        assert len(pids) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_fast_slew_is_ended_by_a_timer_when_it_is_due(tmp_path):
    """The daemon asks the discipline how long the slew in progress has left and comes back
    exactly then, so the kernel's tick length is put back on time."""
    from stratum1.clock import FrozenDisciplineClock, SystemClock
    from stratum1.daemon import Daemon

    conf = tmp_path / "ntp.conf"
    conf.write_text(LOCAL_CONF)
    opts = options_from_args(build_parser().parse_args(
        ["run", "-n", "--no-discipline", "-c", str(conf), "--listen", "127.0.0.1:0"]))
    d = Daemon(load_config(opts), opts, FrozenDisciplineClock(SystemClock()))

    class SlewingDiscipline:
        def __init__(self):
            self.calls = []
            self.left = [0.05, 0.01, None]  # due in 50 ms, then 10 ms more (rounding), done

        def service_slew(self, *, force=False):
            self.calls.append(time.monotonic())
            return self.left.pop(0)

    d.discipline = SlewingDiscipline()
    d._schedule_slew_end()
    assert d._slew_timer is not None
    d.loop.run(until_ns=d.loop.now_ns() + 300_000_000)
    calls = d.discipline.calls
    assert len(calls) == 3 and d._slew_timer is None
    assert calls[1] - calls[0] >= 0.045 and calls[2] - calls[1] >= 0.005
    d.loop.close()
