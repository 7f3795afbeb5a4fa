"""ntpd (ntpsec) as a client of the daemon: within seconds of ``iburst`` it takes our server as
its system peer (``*`` in ``ntpq -p``), at the stratum we serve.

ntpd cannot share a loopback with us: it refuses every 127/8 server address but 127.0.0.1
(ISBADADR) and always binds every loopback address on port 123. So the test makes two network
namespaces of its own, joined by a veth pair (packets never leave them): our daemon in one, ntpd
in the other. Neither process has CAP_SYS_TIME, ntpd runs with ``disable ntp`` and
``disable kernel``, and its drift and statistics files stay in the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from interop_support import LOCAL_CONF, find_tool, no_clock_prefix

SERVER_ADDR = "10.85.80.1"  # our daemon, in namespace A
CLIENT_ADDR = "10.85.80.2"  # ntpd, in namespace B
#: iburst gives ntpd four samples in about 8 s; the daemon itself needs a few to sync.
SYNC_TIMEOUT_S = 45.0
HOLDER_LIFETIME_S = 240  # a namespace outlives no test run even if teardown is skipped
DAEMON_LIFETIME_S = 180  # nor does a daemon in it (coreutils timeout ends it)

SIM_CONF = """\
# interop test: the simulated NMEA + PPS receiver (stratum 0), so we serve stratum 1
refclock sim unit 0 flag1 1
"""

NTPD_CONF = """\
server {server} iburst
# measure and select only: never adjust the clock (ntpd also lacks CAP_SYS_TIME here)
disable ntp
disable kernel
driftfile {tmp}/ntpd.drift
statsdir {tmp}/ntpstats/
restrict default kod limited nomodify noquery
restrict 127.0.0.1
restrict ::1
"""


def _need(tool: str, package: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip(f"{tool} not found: install Debian package {package}")
    return found


class _Netns:
    """A private network namespace, held open by a sleeping process we own."""

    def __init__(self, unshare: str, nsenter: str) -> None:
        self._nsenter = nsenter
        self.holder = subprocess.Popen([unshare, "--net", "--", "sleep", str(HOLDER_LIFETIME_S)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, start_new_session=True)
        self.path = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 5.0
        own = os.readlink("/proc/self/ns/net")
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                err = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
                pytest.skip(f"cannot make a network namespace here (unshare --net): {err.strip()}")
            try:
                if os.readlink(self.path) != own:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.close()
        pytest.skip("unshare --net did not enter a new network namespace within 5 s")

    def prefix(self) -> list[str]:
        return [self._nsenter, f"--net={self.path}", "--"]

    def run(self, argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def check(self, argv: Sequence[str]) -> str:
        result = self.run(argv)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(5)


class _Proc:
    """A daemon started inside a namespace without the clock capability, output to a file."""

    def __init__(self, ns: _Netns, argv: Sequence[str], log_path: Path, cwd: Path) -> None:
        limit = [_need("timeout", "coreutils"), "-k", "5", str(DAEMON_LIFETIME_S)]
        self.argv = [*ns.prefix(), *no_clock_prefix(), *limit, *argv]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe(self) -> str:
        self._log.flush()
        state = "running" if self.alive() else f"exited {self.proc.returncode}"
        tail = self.log_path.read_text(errors="replace")[-4000:]
        return f"$ {' '.join(self.argv)}\n[{state}]\n{tail}"

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


class _World:
    """Namespaces A (our daemon) and B (ntpd) joined by veth; everything it starts it stops."""

    def __init__(self, tmp: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root: network namespaces keep ntpd off this host's port 123")
        unshare = _need("unshare", "util-linux")
        nsenter = _need("nsenter", "util-linux")
        self.ip = _need("ip", "iproute2")
        self.tmp = tmp
        self.procs: list[_Proc] = []
        self.a = _Netns(unshare, nsenter)
        self.spaces = [self.a]
        self.b = _Netns(unshare, nsenter)
        self.spaces.append(self.b)
        ip = self.ip
        made = self.a.run([ip, "link", "add", "s1va", "type", "veth", "peer", "name", "s1vb",
                           "netns", str(self.b.holder.pid)])
        if made.returncode != 0:
            pytest.skip(f"no veth pair here (ip link add type veth): {made.stderr.strip()}")
        for ns, dev, addr in ((self.a, "s1va", SERVER_ADDR), (self.b, "s1vb", CLIENT_ADDR)):
            ns.check([ip, "addr", "add", f"{addr}/24", "dev", dev])
            ns.check([ip, "link", "set", dev, "up"])
            ns.check([ip, "link", "set", "lo", "up"])
        # ntpd lists interfaces once at start: the link must have its carrier by then.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            states = [ns.check([ip, "-o", "link", "show", "dev", dev])
                      for ns, dev in ((self.a, "s1va"), (self.b, "s1vb"))]
            if all("LOWER_UP" in s and "NO-CARRIER" not in s for s in states):
                return
            time.sleep(0.05)
        pytest.fail(f"veth link never came up: {states}")

    def start(self, ns: _Netns, argv: Sequence[str], name: str) -> _Proc:
        proc = _Proc(ns, argv, self.tmp / f"{name}.log", self.tmp)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for ns in self.spaces:
            ns.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[_World]:
    w: _World | None = None
    try:
        w = _World(tmp_path)
        yield w
    finally:
        if w is not None:
            w.close()


def _ntpq(world: _World, ntpq: str, host: str, command: str) -> str:
    result = world.b.run([*no_clock_prefix(), ntpq, "-n", "-c", command, host], timeout=20)
    return result.stdout + result.stderr


def _peer_line(peers: str, addr: str) -> str | None:
    for line in peers.splitlines():
        if line[1:].split(" ", 1)[0] == addr:
            return line
    return None


def _wait(what: str, timeout: float, probe, *procs: _Proc):
    """Call probe() about once a second until it returns something true; fail showing logs."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{what}: a daemon exited\n" + "\n".join(p.describe() for p in procs))
        ok, last = probe()
        if ok:
            return last
        time.sleep(1.0)
    pytest.fail(f"{what} not within {timeout} s; last seen:\n{last}\n"
                + "\n".join(p.describe() for p in procs))


@pytest.mark.parametrize(("config", "served_stratum", "refid"), [
    pytest.param(LOCAL_CONF, 11, "LOCL", id="local"),
    pytest.param(SIM_CONF, 1, "SIM", id="sim"),
])
def test_ntpd_selects_our_server(world: _World, config: str, served_stratum: int,
                                 refid: str) -> None:
    ntpd = find_tool("ntpd", "ntpsec")
    ntpq = find_tool("ntpq", "ntpsec")
    conf = world.tmp / "stratum1.conf"
    conf.write_text(config)
    ours = world.start(world.a, [sys.executable, "-m", "stratum1", "run", "-n", "--no-discipline",
                                 "--listen", f"{SERVER_ADDR}:123", "-c", str(conf)], "stratum1")

    # ntpd's iburst lasts about 10 s: start it once we serve synchronised time, or it would
    # spend the burst on LI=3 replies and wait a full poll (64 s) before trying again.
    def served() -> tuple[bool, str]:
        out = _ntpq(world, ntpq, SERVER_ADDR, "rv 0 leap,stratum,refid")
        return ("leap=00" in out and f"stratum={served_stratum}," in out), out

    _wait("our daemon synchronised (ntpq rv from namespace B)", SYNC_TIMEOUT_S, served, ours)

    (world.tmp / "ntpstats").mkdir()
    ntpd_conf = world.tmp / "ntpd.conf"
    ntpd_conf.write_text(NTPD_CONF.format(server=SERVER_ADDR, tmp=world.tmp))
    theirs = world.start(world.b, [ntpd, "-n", "-c", str(ntpd_conf)], "ntpd")

    def selected() -> tuple[bool, str]:
        out = _ntpq(world, ntpq, "127.0.0.1", "peers")
        line = _peer_line(out, SERVER_ADDR)
        return (line is not None and line.startswith("*")), out

    peers = _wait("ntpd taking us as its system peer", SYNC_TIMEOUT_S, selected, ours, theirs)
    fields = _peer_line(peers, SERVER_ADDR).split()  # type: ignore[union-attr]
    # remote refid st t when poll reach delay offset jitter
    assert int(fields[2]) == served_stratum, peers
    # ntpd passes our refid through. ntpq shows a stratum-1 refid as text (.SIM.), any other
    # as an address (with -n, LOCL is the dotted quad of its four bytes).
    shown = (f".{refid}." if served_stratum <= 1
             else ".".join(str(b) for b in refid.encode().ljust(4, b"\0")))
    assert fields[1] == shown, peers
    assert int(fields[6], 8) != 0, peers  # reach
    assert abs(float(fields[8])) < 5.0, peers  # offset in ms: same host, same clock

    sysvars = _ntpq(world, ntpq, "127.0.0.1", "rv 0 stratum,refid")
    assert f"stratum={served_stratum + 1}," in sysvars, sysvars
    assert f"refid={SERVER_ADDR}" in sysvars, sysvars
    assert ours.alive() and theirs.alive()
