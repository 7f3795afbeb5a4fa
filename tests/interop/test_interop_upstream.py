"""stratum1's client side against a real chronyd server on loopback: it synchronises to it,
with no key, a shared MD5 key and an AES128CMAC key, and rejects it when the key is wrong.

chronyd runs with -x (never touches the clock) and without CAP_SYS_TIME, as a `local stratum 2`
server on an unprivileged port of 127.0.0.60. Our side runs in this process: an EventLoop, an
``Upstream`` and a ``SystemProcess`` that selects, with a clock that is never adjusted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from interop_support import find_chronyd, no_clock_prefix, ntp_query, port_free

from stratum1.auth import Authenticator
from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.config.model import AssociationConfig
from stratum1.eventloop import EventLoop
from stratum1.keys import parse_keys
from stratum1.system import SystemProcess
from stratum1.upstream import Upstream

CHRONY_HOST = "127.0.0.60"
SECRET_MD5 = "Sesame"
SECRET_AES = "00112233445566778899aabbccddeeff"
# chronyd's keys file and ours describe the same secrets in each program's own spelling.
CHRONY_KEYS = f"7 MD5 {SECRET_MD5}\n8 AES128 HEX:{SECRET_AES.upper()}\n"
OUR_KEYS = f"7 MD5 {SECRET_MD5}\n8 AES128CMAC {SECRET_AES}\n9 MD5 NotSesame\n"


def _free_port(host: str) -> int:
    for port in range(11160, 11260):
        if port_free(host, port):
            return port
    pytest.skip(f"no free UDP port on {host}")


class Chronyd:
    """chronyd serving `local stratum 2` on CHRONY_HOST:port; stopped by the fixture."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = find_chronyd()
        if port is not None and not port_free(CHRONY_HOST, port):
            pytest.skip(f"UDP port {port} of {CHRONY_HOST} is in use")
        self.port = port if port is not None else _free_port(CHRONY_HOST)
        keys = workdir / "chrony.keys"
        keys.write_text(CHRONY_KEYS)
        keys.chmod(0o600)
        conf = workdir / "chrony.conf"
        conf.write_text("\n".join([
            f"port {self.port}",
            f"bindaddress {CHRONY_HOST}",
            "allow 127.0.0.0/8",
            "local stratum 2",
            "cmdport 0",
            f"pidfile {workdir}/chronyd.pid",
            f"driftfile {workdir}/chrony.drift",
            f"keyfile {keys}",
            "",
        ]))
        self.log_path = workdir / "chronyd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [*no_clock_prefix(), binary, "-x", "-d", "-u", "root", "-f", str(conf)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chronyd exited {self.proc.returncode}:\n{self.output()}")
            try:
                reply = ntp_query(CHRONY_HOST, self.port, timeout=0.5)
            except TimeoutError:
                continue
            if reply.leap != 3:
                return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"chronyd not serving synchronised time within 15 s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"[chronyd {state}]\n{self.log_path.read_text(errors='replace')}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def chronyd(tmp_path):
    # One chronyd per test: it starts serving at once, and each test sees a fresh server.
    server = Chronyd(tmp_path)
    yield server
    server.stop()


def synchronise(chronyd: Chronyd, key: int | None, timeout_s: float = 20.0):
    """Poll chronyd with iburst until the system selects it (or time runs out).

    Returns (selected, system snapshot, association, peer stats), taken before the
    association is closed (closing removes it from the system)."""
    loop = EventLoop()
    clock = FrozenDisciplineClock(SystemClock())
    system = SystemProcess(precision=-20, discipline=None)
    auth = Authenticator(parse_keys(OUR_KEYS).keys, trusted=[7, 8, 9])
    ids = iter(range(1, 100))
    upstream = Upstream(loop, clock, system, on_update=lambda: system.update(clock.now_ns()),
                        next_assoc_id=lambda: next(ids), authenticator=auth,
                        kernel_timestamps=True)
    try:
        config = AssociationConfig(kind="server", host=CHRONY_HOST, family=None, iburst=True,
                                   minpoll=4, maxpoll=4, key=key)
        source = upstream.add(config, port=chronyd.port)
        [member] = source.members
        a = member.association
        deadline = loop.now_ns() + int(timeout_s * 1e9)
        while loop.now_ns() < deadline:
            loop.run(until_ns=min(deadline, loop.now_ns() + 100_000_000))
            if system.system_peer is a and a.received >= 4:
                break
        return system.system_peer is a, system.snapshot, a, member.peer.stats
    finally:
        upstream.close()
        loop.close()


def check_synchronised(chronyd, selected, snapshot, a, stats):
    info = f"{stats} unfit: {a.unfit_reason}\n{chronyd.output()}"
    assert selected, info
    assert a.stratum == 2 and a.reach != 0, info
    # Same machine, same clock: the offset is the measurement noise of loopback.
    assert abs(a.offset) < 0.002, info
    assert 0 <= a.delay < 0.01, info
    assert snapshot.stratum == 3 and snapshot.leap == 0, info
    assert sum(stats.dropped.values()) == 0, info


def test_synchronises_to_chronyd(chronyd):
    check_synchronised(chronyd, *synchronise(chronyd, key=None))


def test_synchronises_to_chronyd_with_md5(chronyd):
    check_synchronised(chronyd, *synchronise(chronyd, key=7))


def test_synchronises_to_chronyd_with_aes128cmac(chronyd):
    check_synchronised(chronyd, *synchronise(chronyd, key=8))


def test_rejects_chronyd_when_the_key_is_wrong(chronyd):
    # Key 9 is unknown to chronyd: it must not become a source, whatever chronyd answers.
    selected, snapshot, a, stats = synchronise(chronyd, key=9, timeout_s=8.0)
    info = f"{stats}\n{chronyd.output()}"
    assert stats.sent >= 4, info
    assert stats.accepted == 0 and a.reach == 0, info
    assert not selected and snapshot.stratum == 16, info
    assert stats.received == stats.dropped["auth"] + stats.dropped["crypto_nak"], info


def test_daemon_synchronises_to_chronyd(tmp_path, start_daemon):
    """The whole daemon: `server 127.0.0.60 iburst key 8` in ntp.conf (port 123, as the
    configuration has no port), serving on 127.0.0.61 at stratum 3 once it took chronyd."""
    import stratum1.daemon

    if "Upstream" not in Path(stratum1.daemon.__file__).read_text():
        pytest.skip("stratum1/daemon.py does not start network associations yet")
    server = Chronyd(tmp_path, port=123)
    try:
        keys = tmp_path / "ntp.keys"
        keys.write_text(OUR_KEYS)
        keys.chmod(0o600)
        listen_port = _free_port("127.0.0.61")
        daemon = start_daemon(
            f"keys {keys}\ntrustedkey 8\nserver {CHRONY_HOST} iburst minpoll 4 key 8\n",
            listen=f"127.0.0.61:{listen_port}",
        )
        reply = daemon.wait_for_reply("127.0.0.61", listen_port, timeout=40.0)
        assert reply.stratum == 3, daemon.describe()
        assert reply.refid == bytes(int(x) for x in CHRONY_HOST.split(".")), daemon.describe()
        assert abs(reply.offset) < 0.01
    finally:
        server.stop()
