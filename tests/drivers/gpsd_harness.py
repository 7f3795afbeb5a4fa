"""Run a real gpsd on loopback for the SHM and gpsd driver tests: fed by gpsfake (``GpsFake``),
or reading NMEA from a TCP feeder in this process (``GpsdTcp``; gpsd does not write the NTP
SHM segments for gpsfake's pseudo-terminals, but does for a TCP source).

Tests call ``require_gpsfake()`` first: it skips, naming the Debian packages, when gpsd or
gpsfake is absent. Every process and SysV segment started here is stopped or removed by
``stop()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from stratum1.hw import shm as hwshm

CAPTURES = Path("/work/shared/captures/nmea")
#: A u-blox 8 capture with a 3D fix every second (gpsd sends TPV and TOFF for it).
DEFAULT_LOG = CAPTURES / "ublox-8.log"


def require_gpsfake() -> None:
    missing = [p for p in ("gpsd", "gpsfake") if shutil.which(p) is None]
    if missing:
        pytest.skip(
            f"needs {' and '.join(missing)} (Debian packages gpsd, gpsd-clients: "
            "apt-get install gpsd gpsd-clients)"
        )
    if not DEFAULT_LOG.exists():
        pytest.skip(f"needs the NMEA capture {DEFAULT_LOG}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GpsFake:
    """gpsfake (and the gpsd it starts) in its own process group, stopped by ``stop()``."""

    def __init__(self, logfile: Path = DEFAULT_LOG, cycle: float = 0.05) -> None:
        self.logfile = logfile
        self.cycle = cycle
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._out = tempfile.TemporaryFile()

    def start(self, timeout_s: float = 15.0) -> GpsFake:
        gpsfake = shutil.which("gpsfake")
        assert gpsfake
        self.proc = subprocess.Popen(
            [gpsfake, "-n", "-q", "-P", str(self.port), "-c", str(self.cycle), str(self.logfile)],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpsfake exited with {self.proc.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gpsd did not listen on port {self.port}: {self.output()}")

    def output(self) -> str:
        self._out.seek(0)
        return self._out.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # The group is the one this object created: gpsfake and the gpsd it started.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        _wait_group_gone(proc.pid)
        # gpsfake gives its gpsd the export segment key 0x4770<port> and gpsd leaves it behind.
        hwshm.remove_segment(0x47700000 + self.port)

    def __enter__(self) -> GpsFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def nmea_lines(logfile: Path = DEFAULT_LOG) -> list[bytes]:
    """The sentences of a capture, without its comment header."""
    return [ln for ln in logfile.read_bytes().splitlines(True) if ln.startswith((b"$", b"!"))]


class GpsdTcp:
    """gpsd reading NMEA from a loopback TCP feeder thread (``tcp://`` source), so it behaves
    as with a real receiver, writing the NTP SHM segments when run as root."""

    def __init__(self, logfile: Path = DEFAULT_LOG, line_interval_s: float = 0.01,
                 max_run_s: float = 60.0) -> None:
        self.lines = nmea_lines(logfile)
        self.line_interval_s = line_interval_s
        self.max_run_s = max_run_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory()
        self._out = tempfile.TemporaryFile()
        self._stop = threading.Event()
        self._server = socket.socket()
        self._thread: threading.Thread | None = None
        self.export_key = 0x47710000 + (os.getpid() & 0xFFFF)
        self._preexisting = {u for u in range(8) if _segment_exists(hwshm.shm_key(u))}

    def _feed(self) -> None:
        self._server.settimeout(0.5)
        deadline = time.monotonic() + self.max_run_s
        conn = None
        while conn is None and not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
        if conn is None:
            return
        with conn:
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.sendall(self.lines[i % len(self.lines)])
                except OSError:
                    return
                i += 1
                self._stop.wait(self.line_interval_s)

    def start(self, timeout_s: float = 15.0) -> GpsdTcp:
        gpsd = shutil.which("gpsd")
        assert gpsd
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1)
        feed_port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()
        env = dict(os.environ, GPSD_SHM_KEY=f"0x{self.export_key:08x}")
        self.proc = subprocess.Popen(
            [gpsd, "-N", "-n", "-S", str(self.port), "-F", os.path.join(self._tmp.name, "sock"),
             "-P", os.path.join(self._tmp.name, "pid"), f"tcp://127.0.0.1:{feed_port}"],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpsd exited with {self.proc.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gpsd did not listen on port {self.port}: {self.output()}")

    def output(self) -> str:
        self._out.seek(0)
        return self._out.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        self._stop.set()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # our own child, by its pid
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server.close()
        # gpsd leaves the segments it made; remove those that were not here before us.
        for u in range(8):
            if u not in self._preexisting:
                hwshm.remove_segment(hwshm.shm_key(u))
        hwshm.remove_segment(self.export_key)
        self._tmp.cleanup()

    def __enter__(self) -> GpsdTcp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _segment_exists(key: int) -> bool:
    seg = hwshm.ShmSegment(key, create=False)
    try:
        seg.open()
    except OSError:
        return False
    seg.close()
    return True
