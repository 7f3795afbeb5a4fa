"""``stratum1 status`` and ``stratum1 peers``: the mode-6 client, the two screens, exit codes,
and both against a running daemon answering through stratum1.control."""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from stratum1 import status as status_mod
from stratum1.control import (
    FLAG_ERROR,
    FLAG_MORE,
    FLAG_RESPONSE,
    HEADER,
    MODE_CONTROL,
    OP_READVAR,
)
from stratum1.status import (
    EXIT_SYNCHRONISED,
    EXIT_UNKNOWN,
    EXIT_UNSYNCHRONISED,
    Mode6Error,
    Peer,
    Reassembly,
    ServerView,
    encode_request,
    format_duration,
    parse_values,
    render_peers,
    render_status,
    synchronised,
)


def fragment(seq: int, offset: int, data: bytes, more: bool, opcode: int = OP_READVAR,
             status: int = 0x0615, error: int | None = None) -> bytes:
    flags = FLAG_RESPONSE | (FLAG_MORE if more else 0) | (FLAG_ERROR if error is not None else 0)
    if error is not None:
        status = error << 8
    body = HEADER.pack((2 << 3) | MODE_CONTROL, flags | opcode, seq, status, 0, offset,
                       len(data)) + data
    return body + bytes(-len(body) % 4)


def test_request_is_a_well_formed_mode6_packet():
    from stratum1.control import parse_request

    req = parse_request(encode_request(OP_READVAR, 77, 3, b"offset,jitter"))
    assert (req.opcode, req.sequence, req.assoc_id, req.payload) == (
        OP_READVAR, 77, 3, b"offset,jitter")


def test_fragments_reassemble_in_any_order_and_strays_are_ignored():
    r = Reassembly(OP_READVAR, 9)
    assert r.add(fragment(8, 0, b"stray=1", False)) is None  # another sequence
    assert r.add(fragment(9, 4, b"5678", False)) is None
    assert r.add(b"\x00" * 3) is None
    reply = r.add(fragment(9, 0, b"1234", True))
    assert reply is not None and reply.data == b"12345678" and reply.status == 0x0615


def test_error_response_raises():
    r = Reassembly(OP_READVAR, 1)
    with pytest.raises(Mode6Error) as info:
        r.add(fragment(1, 0, b"", False, error=5))
    assert info.value.code == 5


def test_parse_values_handles_quotes_commas_and_line_breaks():
    text = b'version="stratum1 0.1, beta", leap=0,\r\nstratum=1, refid=PPS, offset=-0.000123\r\n'
    assert parse_values(text) == {"version": "stratum1 0.1, beta", "leap": "0", "stratum": "1",
                                  "refid": "PPS", "offset": "-0.000123"}


def test_synchronised_is_ntpstats_rule():
    assert synchronised({"leap": "0", "stratum": "1"})
    assert synchronised({"leap": "1", "stratum": "2"})
    assert not synchronised({"leap": "3", "stratum": "1"})
    assert not synchronised({"leap": "0", "stratum": "16"})
    assert not synchronised({})


def test_format_duration():
    assert format_duration(59) == "00:00:59"
    assert format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3 d 04:05:06"


NOW_NTP = "0xed000000.00000000"


def _view(synced: bool = True, pps_selected: bool = True, uptime: int | None = 90061) -> ServerView:
    system = {"version": "stratum1 0.1", "leap": "0" if synced else "3",
              "stratum": "1" if synced else "16", "refid": "PPS" if synced else "INIT",
              "peer": "2" if synced else "0", "offset": "0.000412", "sys_jitter": "0.000950",
              "rootdelay": "0.000", "rootdisp": "1.025", "frequency": "-12.345678",
              "clk_wander": "0.004", "tc": "4", "clock": NOW_NTP}
    nmea = {"srcadr": "127.127.20.0", "srchost": "GPS_NMEA(0)", "refid": "GPS", "stratum": "0",
            "hpoll": "4", "reach": "0xff", "rec": "0xecfffff0.00000000", "delay": "0.000000",
            "offset": "-12.345678", "jitter": "3.210000"}
    pps = {"srcadr": "127.127.22.0", "srchost": "PPS(0)", "refid": "PPS", "stratum": "0",
           "hpoll": "4", "reach": "0x17", "rec": "0xecfffffd.80000000", "delay": "0.000000",
           "offset": "0.000412", "jitter": "0.000950"}
    peers = [Peer(1, 0x9614 if not pps_selected else 0x9414, nmea),
             Peer(2, 0x9714 if pps_selected else 0x9014, pps)]
    return ServerView(system, peers, uptime)


def test_peers_screen_matches_ntpq_p():
    out = render_peers(_view()).splitlines()
    assert out[0] == ("     remote           refid      st t when poll reach   delay   offset"
                      "  jitter")
    assert out[1] == "=" * 78
    assert out[2] == ("+GPS_NMEA(0)     .GPS.            0 l   16   16  377    0.000  -12.346"
                      "   3.210")
    assert out[3] == ("oPPS(0)          .PPS.            0 l    2   16   27    0.000    0.000"
                      "   0.001")


def test_status_screen_synchronised():
    text = render_status(_view(), "127.0.0.1:123")
    assert "synchronised to PPS(0) (127.127.22.0), stratum 1, refid PPS" in text
    assert "offset    +0.412 us, jitter 0.950 us (root delay 0.000 us, dispersion 1.025 ms)" in text
    assert "PPS       in use: PPS(0) is the PPS peer (o)" in text
    assert "leap      none pending" in text
    assert "drift     -12.346 PPM (wander 0.004 PPM), poll 16 s" in text
    assert "uptime    1 d 01:01:01" in text


def test_status_screen_explains_unused_pps_and_unsynchronised():
    text = render_status(_view(synced=False, pps_selected=False, uptime=None), "x")
    assert "NOT synchronised: 2 source(s) reachable, none selected yet" in text
    assert "PPS(0): pulses arrive (reach 27) but not used (reject)" in text
    assert "uptime    unknown" in text
    assert "leap      unknown (not synchronised)" in text


# -- against a live daemon -------------------------------------------------------------------


def _daemon(tmp_path, monkeypatch, conf_text):
    from stratum1 import daemon as daemon_mod
    from stratum1.cli import build_parser
    from stratum1.clock import FrozenDisciplineClock, SystemClock
    from stratum1.daemon import Daemon, load_config, options_from_args

    monkeypatch.setattr(daemon_mod, "STARTUP_POLL_S", 0.05)
    conf = tmp_path / "ntp.conf"
    conf.write_text(conf_text)
    opts = options_from_args(build_parser().parse_args(
        ["run", "--no-discipline", "-c", str(conf), "--listen", "127.0.0.1:0"]))
    d = Daemon(load_config(opts), opts, FrozenDisciplineClock(SystemClock()))
    d.start()  # the daemon answers mode 6 through stratum1.control
    return d


def _close(d):
    d.close()
    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def _run_with_loop(d, work, timeout=15.0):
    result: dict[str, object] = {}

    def run():
        try:
            result["value"] = work()
        except BaseException as exc:  # handed back to the test
            result["error"] = exc
        finally:
            d.loop.stop()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    d.loop.run(until_ns=d.loop.now_ns() + int(timeout * 1e9))
    t.join(timeout)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def _args(host, port, timeout=2.0):
    return argparse.Namespace(host=f"{host}:{port}", port=None, timeout=timeout)


def test_status_and_peers_of_a_running_daemon(tmp_path, monkeypatch, capsys):
    d = _daemon(tmp_path, monkeypatch, "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n")
    host, port = d.servers[0].address
    try:
        def work():
            deadline = time.monotonic() + 10
            code = None
            while time.monotonic() < deadline:
                code = status_mod.main_status(_args(host, port))
                if code == EXIT_SYNCHRONISED:
                    break
                time.sleep(0.1)
            return code, status_mod.main_peers(_args(host, port))

        codes = _run_with_loop(d, work)
    finally:
        _close(d)
    out = capsys.readouterr().out
    assert codes == (EXIT_SYNCHRONISED, 0)
    assert "synchronised to LOCAL(0) (127.127.1.0), stratum 11, refid LOCL" in out
    assert "PPS       none configured" in out
    peer_rows = [line for line in out.splitlines() if "LOCAL(0)" in line and ".LOCL." in line]
    assert peer_rows and peer_rows[-1].startswith("*LOCAL(0)")
    assert " 10 l " in peer_rows[-1]


def test_status_of_an_unsynchronised_daemon_exits_1(tmp_path, monkeypatch, capsys):
    d = _daemon(tmp_path, monkeypatch, f"refclock pps unit 0 path {tmp_path}/nopps\n")
    host, port = d.servers[0].address
    try:
        code = _run_with_loop(d, lambda: status_mod.main_status(_args(host, port)))
    finally:
        _close(d)
    out = capsys.readouterr().out
    assert code == EXIT_UNSYNCHRONISED
    assert "NOT synchronised" in out
    assert "no pulses yet (reach 0)" in out


def test_no_daemon_exits_2(capsys):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:  # a bound socket that never answers
        assert status_mod.main_status(_args("127.0.0.1", port, timeout=0.3)) == EXIT_UNKNOWN
        assert status_mod.main_peers(_args("127.0.0.1", port, timeout=0.3)) == EXIT_UNKNOWN
    finally:
        s.close()
    assert "no answer from 127.0.0.1:" in capsys.readouterr().err


def _free_port_123(first: int, last: int) -> str | None:
    for n in range(first, last + 1):
        host = f"127.0.0.{n}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((host, 123))
        except OSError:
            continue
        finally:
            s.close()
        return host
    return None


@pytest.mark.skipif(shutil.which("ntpq") is None, reason="needs ntpsec's ntpq (Debian ntpsec)")
def test_peers_agrees_with_ntpq_p(tmp_path, monkeypatch, capsys):
    """ntpq only speaks to port 123: 127.0.0.57-59 are this file's addresses for it."""
    host = _free_port_123(57, 59)
    if host is None:
        pytest.skip("127.0.0.57-59: port 123 busy or not ours to bind (needs root)")
    d = _daemon(tmp_path, monkeypatch, "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n")
    monkeypatch.setattr(d.opts, "listen", [(host, 123)])
    d._open_servers()
    try:
        def work():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if status_mod.main_status(_args(host, 123)) == EXIT_SYNCHRONISED:
                    break
                time.sleep(0.1)
            time.sleep(0.3)
            ours = status_mod.main_peers(_args(host, 123))
            theirs = subprocess.run(["ntpq", "-p", host], capture_output=True, text=True,
                                    timeout=20, check=False)
            return ours, theirs

        ours_code, theirs = _run_with_loop(d, work, timeout=30)
    finally:
        _close(d)
    assert ours_code == 0 and theirs.returncode == 0, theirs.stderr
    ours_row = [r for r in capsys.readouterr().out.splitlines() if "LOCAL(0)" in r][-1].split()
    theirs_row = [r for r in theirs.stdout.splitlines() if "LOCAL(0)" in r][-1].split()
    # tally+remote, refid, stratum, type, poll, reach; "when" and the decimals may differ.
    assert [ours_row[i] for i in (0, 1, 2, 3, 5, 6)] == [theirs_row[i] for i in (0, 1, 2, 3, 5, 6)]
