"""The Prometheus endpoint: families and values from a state, the state of a real daemon, and the
non-blocking HTTP responder on the EventLoop."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from stratum1 import metrics as metrics_mod  # noqa: E402
from stratum1.eventloop import EventLoop  # noqa: E402
from stratum1.metrics import (  # noqa: E402
    DriverState,
    MetricsServer,
    MetricsState,
    SourceState,
    SystemState,
    daemon_state,
    parse_address,
    registry_for,
    start_metrics,
)

STATE = MetricsState(
    system=SystemState(synchronized=True, stratum=1, leap=0, offset=-2.5e-6, frequency_ppm=-12.5,
                       sys_jitter=1e-6, clock_jitter=2e-7, clock_wander_ppm=0.003,
                       root_delay=0.0, root_dispersion=1e-5, poll=4, refid="PPS",
                       system_peer="PPS(0)", uptime=3600.0),
    sources=(
        SourceState("GPS_NMEA(0)", "127.127.20.0", reach=0o377, selection=5, offset=0.012,
                    jitter=0.003, poll=4, stratum=0, last_sample_age=3.0),
        SourceState("PPS(0)", "127.127.22.0", reach=0o17, selection=7, offset=-1e-6,
                    jitter=5e-7, poll=4, stratum=0),
    ),
    drivers=(
        DriverState("GPS_NMEA(0)", "nmea", "127.127.20.0", opened=True, samples=3600,
                    faults=1, errors={"badformat": 4, "baddata": 2, "noreply": 0}),
        DriverState("PPS(0)", "pps", "127.127.22.0", opened=True, pps=True, pulses=3599),
    ),
    server={"received": 1000, "replied": 990, "kod_sent": 3, "malformed": 7, "restricted": 2,
            "control": 5},
)


def scrape_text(state: MetricsState) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry_for(lambda: state)).decode()


class Samples(dict):
    """Sample values keyed by (name, label pairs), the pairs in any order."""

    @staticmethod
    def _key(key):
        name, labels = key
        return name, tuple(sorted(labels))

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __contains__(self, key):
        return super().__contains__(self._key(key))


def samples(text: str) -> Samples:
    out = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_system_metrics():
    got = samples(scrape_text(STATE))
    assert got[("stratum1_up", ())] == 1
    assert got[("stratum1_system_synchronized", ())] == 1
    assert got[("stratum1_system_stratum", ())] == 1
    assert got[("stratum1_system_leap", ())] == 0
    assert got[("stratum1_system_offset_seconds", ())] == pytest.approx(-2.5e-6)
    assert got[("stratum1_system_frequency_ppm", ())] == pytest.approx(-12.5)
    assert got[("stratum1_system_jitter_seconds", ())] == pytest.approx(1e-6)
    assert got[("stratum1_system_poll_seconds", ())] == 16
    assert got[("stratum1_uptime_seconds", ())] == 3600
    assert got[("stratum1_system_peer_info", (("refid", "PPS"), ("source", "PPS(0)")))] == 1


def test_source_metrics_and_selection_state():
    got = samples(scrape_text(STATE))
    nmea = (("address", "127.127.20.0"), ("source", "GPS_NMEA(0)"))
    assert got[("stratum1_source_reach", nmea)] == 255
    assert got[("stratum1_source_reachability_ratio", nmea)] == 1.0
    assert got[("stratum1_source_offset_seconds", nmea)] == pytest.approx(0.012)
    assert got[("stratum1_source_last_sample_age_seconds", nmea)] == 3.0
    assert got[("stratum1_source_selection", (*nmea, ("state", "backup")))] == 1
    assert got[("stratum1_source_selection", (*nmea, ("state", "sys.peer")))] == 0
    pps = (("address", "127.127.22.0"), ("source", "PPS(0)"))
    assert got[("stratum1_source_reachability_ratio", pps)] == 0.5
    assert got[("stratum1_source_selection", (*pps, ("state", "pps.peer")))] == 1
    assert ("stratum1_source_last_sample_age_seconds", pps) not in got


def test_driver_and_server_counters():
    text = scrape_text(STATE)
    got = samples(text)
    nmea = (("driver", "nmea"), ("source", "GPS_NMEA(0)"))
    assert got[("stratum1_driver_samples_total", nmea)] == 3600
    assert got[("stratum1_driver_faults_total", nmea)] == 1
    assert got[("stratum1_driver_errors_total", (*nmea, ("kind", "badformat")))] == 4
    assert got[("stratum1_driver_pps_active", (("driver", "pps"), ("source", "PPS(0)")))] == 1
    assert got[("stratum1_server_requests_total", ())] == 1000
    assert got[("stratum1_server_replies_total", ())] == 990
    assert got[("stratum1_server_kod_total", ())] == 3
    assert got[("stratum1_server_dropped_total", (("reason", "malformed"),))] == 7
    assert got[("stratum1_server_dropped_total", (("reason", "restricted"),))] == 2
    assert "_created" not in text


def test_a_failing_state_reports_down_instead_of_raising():
    def broken() -> MetricsState:
        raise RuntimeError("boom")

    from prometheus_client import generate_latest

    got = samples(generate_latest(registry_for(broken)).decode())
    assert got == {("stratum1_up", ()): 0}


def test_parse_address():
    assert parse_address("127.0.0.1:9123") == ("127.0.0.1", 9123)
    assert parse_address("[::1]:9123") == ("::1", 9123)
    assert parse_address("9123") == ("127.0.0.1", 9123)
    assert parse_address(":9123") == ("0.0.0.0", 9123)
    for bad in ("localhost", "1.2.3.4:70000", "1.2.3.4:x", "[::1]"):
        with pytest.raises(ValueError):
            parse_address(bad)


# -- HTTP ------------------------------------------------------------------------------------


def _serve_while(loop: EventLoop, work, timeout: float = 5.0):
    """Run ``loop`` in this thread while ``work()`` runs in another; return its result."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:  # handed back to the test
            result["error"] = exc
        finally:
            loop.stop()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    loop.run(until_ns=loop.now_ns() + int(timeout * 1e9))
    t.join(timeout)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


@pytest.fixture
def served():
    loop = EventLoop()
    server = start_metrics(loop, "127.0.0.1:0", lambda: STATE)
    host, port = server.bound_address
    yield loop, server, f"http://{host}:{port}"
    server.close()
    loop.close()


def test_get_metrics_over_http(served):
    loop, server, base = served

    def get():
        with urllib.request.urlopen(base + "/metrics", timeout=3) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()

    status, ctype, body = _serve_while(loop, get)
    assert status == 200 and ctype.startswith("text/plain")
    assert samples(body)[("stratum1_system_stratum", ())] == 1
    assert server.scrapes == 1


def test_openmetrics_when_asked(served):
    loop, _server, base = served

    def get():
        req = urllib.request.Request(base + "/metrics",
                                     headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.headers["Content-Type"], r.read().decode()

    ctype, body = _serve_while(loop, get)
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_unknown_path_and_method(served):
    loop, _server, base = served

    def get():
        codes = []
        for req in (urllib.request.Request(base + "/nope"),
                    urllib.request.Request(base + "/metrics", data=b"x", method="POST")):
            try:
                urllib.request.urlopen(req, timeout=3)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        return codes

    assert _serve_while(loop, get) == [404, 405]


def test_garbage_and_silent_clients_are_cut_off(served, monkeypatch):
    loop, server, base = served
    monkeypatch.setattr(metrics_mod, "CONNECTION_TIMEOUT_S", 0.3)
    host, port = server.bound_address

    def clients():
        silent = socket.create_connection((host, port), timeout=3)
        junk = socket.create_connection((host, port), timeout=3)
        junk.sendall(b"\x00\x01garbage\r\n\r\n")
        answer = junk.recv(200)
        junk.close()
        start = time.monotonic()
        closed = silent.recv(10)  # b"" once the server gives up on us
        waited = time.monotonic() - start
        silent.close()
        with urllib.request.urlopen(base + "/metrics", timeout=3) as r:
            still = r.status
        return answer, closed, waited, still

    answer, closed, waited, still = _serve_while(loop, clients)
    assert answer.startswith(b"HTTP/1.1 400")
    assert closed == b"" and waited < 2.5
    assert still == 200


def test_oversized_request_is_refused(served):
    loop, server, _base = served
    host, port = server.bound_address

    def client():
        s = socket.create_connection((host, port), timeout=3)
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000)
        except OSError:
            pass
        data = s.recv(100)
        s.close()
        return data

    assert _serve_while(loop, client).startswith(b"HTTP/1.1 431")


def test_port_in_use_raises():
    loop = EventLoop()
    first = start_metrics(loop, "127.0.0.1:0", lambda: STATE)
    try:
        with pytest.raises(OSError):
            MetricsServer(first.bound_address, registry_for(lambda: STATE)).open()
    finally:
        first.close()
        loop.close()


# -- a real daemon ---------------------------------------------------------------------------


def test_state_of_a_running_daemon(tmp_path, monkeypatch):
    from stratum1 import daemon as daemon_mod
    from stratum1.cli import build_parser
    from stratum1.clock import FrozenDisciplineClock, SystemClock
    from stratum1.daemon import Daemon, load_config, options_from_args
    from stratum1.query import query

    monkeypatch.setattr(daemon_mod, "STARTUP_POLL_S", 0.05)
    conf = tmp_path / "ntp.conf"
    conf.write_text("server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n")
    opts = options_from_args(build_parser().parse_args(
        ["run", "--no-discipline", "-c", str(conf), "--listen", "127.0.0.1:0"]))
    d = Daemon(load_config(opts), opts, FrozenDisciplineClock(SystemClock()))
    started = d.clock.now_ns()
    d.start()
    try:
        host, port = d.servers[0].address
        server = start_metrics(d.loop, "127.0.0.1:0", lambda: daemon_state(d, started))
        mhost, mport = server.bound_address

        def work():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if query(host, port, timeout=0.5).leap != 3:
                    break
                time.sleep(0.05)
            with urllib.request.urlopen(f"http://{mhost}:{mport}/metrics", timeout=3) as r:
                return r.read().decode()

        got = samples(_serve_while(d.loop, work, timeout=15))
        server.close()
    finally:
        d.close()
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
    assert got[("stratum1_system_synchronized", ())] == 1
    assert got[("stratum1_system_stratum", ())] == 11
    local = (("address", "127.127.1.0"), ("source", "LOCAL(0)"))
    assert got[("stratum1_source_reach", local)] > 0
    assert got[("stratum1_source_selection", (*local, ("state", "sys.peer")))] == 1
    assert got[("stratum1_driver_samples_total", (("driver", "local"), ("source", "LOCAL(0)")))] > 0
    assert got[("stratum1_server_requests_total", ())] >= 1
    assert got[("stratum1_server_replies_total", ())] >= 1
    assert got[("stratum1_system_peer_info", (("refid", "LOCL"), ("source", "LOCAL(0)")))] == 1
