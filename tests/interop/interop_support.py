"""Helpers for the interop tests: a tiny independent NTP client, the daemon as a subprocess,
loopback addresses on port 123, and where the reference tools (ntpsec, chrony, gpsd) live.

The client is written from RFC 5905 here on purpose, not imported from stratum1.packet, so that
the daemon's wire format is checked by code that shares nothing with it.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_PACKET = struct.Struct("!BBbbII4sQQQQ")  # RFC 5905 figure 8, without extensions or MAC
LI_UNSYNC = 3
MODE_CLIENT = 3
MODE_SERVER = 4
# RFC 5905 MAXDIST: a client takes no server whose root distance is larger (ntpd: tos maxdist).
MAXDIST = 1.5

REF_DIR = Path(os.environ.get("STRATUM1_REF_DIR", "/opt/stratum1-ref"))
REPO_DIR = Path(__file__).resolve().parents[2]

# The refclock set-up issue 2 asks every tool to agree on: LOCAL at stratum 10, so the
# daemon serves stratum 11 with refid LOCL, as ntpd does.
LOCAL_CONF = """\
# interop test: undisciplined local clock as the only source
server 127.127.1.0
fudge 127.127.1.0 stratum 10
"""


def ns_to_ntp64(unix_ns: int) -> int:
    """Unix ns to an NTP 64-bit timestamp (era 0 wraps to era 1 by the modulo)."""
    sec, frac_ns = divmod(unix_ns, 1_000_000_000)
    return (((sec + NTP_UNIX_OFFSET) % (1 << 32)) << 32) | ((frac_ns << 32) // 1_000_000_000)


def ntp64_to_ns(stamp: int, near_ns: int) -> int:
    """NTP 64-bit timestamp to Unix ns, choosing the era that puts it closest to near_ns."""
    era_ns = (1 << 32) * 1_000_000_000
    sec, frac = stamp >> 32, stamp & 0xFFFF_FFFF
    ns = (sec - NTP_UNIX_OFFSET) * 1_000_000_000 + ((frac * 1_000_000_000 + (1 << 31)) >> 32)
    ns += round((near_ns - ns) / era_ns) * era_ns
    return ns


def _short(value: int) -> float:
    """NTP short format (16.16) to seconds."""
    return value / 65536.0


@dataclass(frozen=True)
class NtpReply:
    """One decoded server reply plus the client's own send (t1) and receive (t4) times."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: float
    root_dispersion: float
    refid: bytes
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int
    t1_ns: int
    t4_ns: int

    @property
    def refid_text(self) -> str:
        return self.refid.rstrip(b"\0").decode("ascii", "replace")

    @property
    def root_distance(self) -> float:
        """What the server claims its error can be at most: root delay / 2 + root dispersion."""
        return self.root_delay / 2 + self.root_dispersion

    @property
    def offset(self) -> float:
        """Server minus client clock, seconds (RFC 5905 theta)."""
        t2 = ntp64_to_ns(self.receive_ts, self.t1_ns)
        t3 = ntp64_to_ns(self.transmit_ts, self.t4_ns)
        return ((t2 - self.t1_ns) + (t3 - self.t4_ns)) / 2e9

    @property
    def delay(self) -> float:
        t2 = ntp64_to_ns(self.receive_ts, self.t1_ns)
        t3 = ntp64_to_ns(self.transmit_ts, self.t4_ns)
        return ((self.t4_ns - self.t1_ns) - (t3 - t2)) / 1e9


def decode_reply(data: bytes, t1_ns: int, t4_ns: int) -> NtpReply:
    if len(data) < _PACKET.size:
        raise ValueError(f"reply of {len(data)} bytes is shorter than an NTP header")
    (lvm, stratum, poll, precision, rdelay, rdisp, refid,
     ref_ts, org_ts, rx_ts, tx_ts) = _PACKET.unpack_from(data)
    return NtpReply(
        leap=lvm >> 6, version=(lvm >> 3) & 7, mode=lvm & 7, stratum=stratum, poll=poll,
        precision=precision, root_delay=_short(rdelay), root_dispersion=_short(rdisp),
        refid=refid, reference_ts=ref_ts, origin_ts=org_ts, receive_ts=rx_ts,
        transmit_ts=tx_ts, t1_ns=t1_ns, t4_ns=t4_ns,
    )


def ntp_query(host: str, port: int = 123, timeout: float = 1.0, version: int = 4) -> NtpReply:
    """Send one mode-3 request and return the matching reply.

    Raises TimeoutError when nothing matching arrives in time; replies whose origin timestamp
    is not our transmit timestamp are ignored (RFC 5905 bogus-packet test).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        t1_ns = time.time_ns()
        xmt = ns_to_ntp64(t1_ns)
        request = _PACKET.pack((0 << 6) | (version << 3) | MODE_CLIENT, 0, 0, 0, 0, 0,
                               b"\0" * 4, 0, 0, 0, xmt)
        sock.send(request)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no NTP reply from {host}:{port} within {timeout} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            except ConnectionRefusedError as exc:
                raise TimeoutError(f"{host}:{port} refused (nothing listening)") from exc
            t4_ns = time.time_ns()
            reply = decode_reply(data, t1_ns, t4_ns)
            if reply.origin_ts == xmt:
                return reply


def find_tool(name: str, package: str, extra: Sequence[Path] = ()) -> str:
    """Absolute path of a reference tool, or skip the test naming the Debian package."""
    for candidate in extra:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    pytest.skip(f"{name} not found: install Debian package {package} "
                f"(scripts/install-interop-tools does)")


def find_chronyd() -> str:
    """chronyd: $STRATUM1_CHRONYD, then the unpacked .deb under $STRATUM1_REF_DIR, then PATH."""
    extra = []
    if os.environ.get("STRATUM1_CHRONYD"):
        extra.append(Path(os.environ["STRATUM1_CHRONYD"]))
    extra += [REF_DIR / "chrony/usr/sbin/chronyd", REPO_DIR / ".ci/cache/chrony/usr/sbin/chronyd"]
    return find_tool("chronyd", "chrony (apt-get download chrony; dpkg-deb -x)", extra)


@functools.cache
def no_clock_prefix() -> tuple[str, ...]:
    """A command prefix that removes CAP_SYS_TIME for good, so nothing we start can set the clock.

    Empty when we are not root: an unprivileged process cannot set the clock anyway.
    """
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not found (Debian package util-linux): refusing to start a "
                    "reference daemon as root with the clock capability")
    prefix = (setpriv, "--inh-caps=-sys_time", "--bounding-set=-sys_time")
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop CAP_SYS_TIME here: {probe.stderr.decode().strip()}")
    return prefix


_used_hosts: set[str] = set()


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except PermissionError:
            pytest.skip(f"binding {host}:{port} needs root or CAP_NET_BIND_SERVICE "
                        "(ntpq and ntpdig only speak to port 123)")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def loopback_host(port: int = 123) -> str:
    """A 127.0.0.N (N distinct per call in this session) whose UDP `port` is free right now.

    N starts at a random point so that test runs of several people on one machine rarely meet.
    """
    candidates = list(range(2, 255))
    start = random.randrange(len(candidates))
    for n in candidates[start:] + candidates[:start]:
        host = f"127.0.0.{n}"
        if host in _used_hosts:
            continue
        if port_free(host, port):
            _used_hosts.add(host)
            return host
    pytest.skip(f"no 127.0.0.N with UDP port {port} free")


class Daemon:
    """The stratum1 daemon started as `python -m stratum1 ...`, output collected in a file."""

    def __init__(self, args: Sequence[str], workdir: Path, name: str = "daemon") -> None:
        self.log_path = workdir / f"{name}.log"
        self.argv = [*no_clock_prefix(), sys.executable, "-m", "stratum1", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited {self.proc.returncode}"
        return f"$ {' '.join(self.argv)}\n[{state}]\n{self.output()}"

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def wait_for_reply(self, host: str, port: int, timeout: float = 30.0,
                       synced: bool = True, max_distance: float | None = None) -> NtpReply:
        """Poll with one query per ~0.5 s until a reply arrives (with LI != 3 if `synced`, and
        a root distance of at most `max_distance` if given).

        Fails the test, showing the daemon's output, if the daemon dies or time runs out.
        """
        deadline = time.monotonic() + timeout
        last: NtpReply | None = None
        last_error = "no reply"
        while time.monotonic() < deadline:
            if not self.alive():
                pytest.fail(f"daemon exited before serving {host}:{port}\n{self.describe()}")
            try:
                last = ntp_query(host, port, timeout=0.5)
            except TimeoutError as exc:
                last_error = str(exc)
                time.sleep(0.2)
                continue
            if (not synced or last.leap != LI_UNSYNC) and (
                    max_distance is None or last.root_distance <= max_distance):
                return last
            time.sleep(0.5)
        got = (f"last reply LI={last.leap} stratum={last.stratum} refid={last.refid!r} "
               f"root distance {last.root_distance:.3f} s"
               if last else last_error)
        pytest.fail(f"daemon on {host}:{port} not ready within {timeout} s ({got})\n"
                    f"{self.describe()}")


def run_tool(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a reference tool without the clock capability and return its output."""
    return subprocess.run([*no_clock_prefix(), *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


SHARED_DIR = Path(os.environ.get("STRATUM1_SHARED", REPO_DIR.parent / "shared"))
NMEA_CAPTURES = SHARED_DIR / "captures" / "nmea"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class GpsFake:
    """A real gpsd fed a capture by gpsd's own `gpsfake`, listening on 127.0.0.1:`port`.

    gpsfake makes a pty, starts gpsd on it, and replays the capture's sentences every `cycle`
    seconds (repeating the file unless `once`).
    """

    def __init__(self, capture: Path, workdir: Path, cycle: float = 0.05,
                 once: bool = False) -> None:
        gpsfake = find_tool("gpsfake", "gpsd-clients")
        find_tool("gpsd", "gpsd")
        if not capture.is_file():
            pytest.skip(f"capture {capture} not found (shared/ beside the checkout?)")
        self.port = free_tcp_port()
        self.log_path = workdir / f"gpsfake-{self.port}.log"
        argv = [*no_clock_prefix(), gpsfake, "-q", "-n", "-c", str(cycle), "-P", str(self.port)]
        if once:
            argv.append("-1")
        argv.append(str(capture))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gpsfake exited {self.proc.returncode}:\n"
                            f"{self.log_path.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"gpsd (gpsfake) not listening on 127.0.0.1:{self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
