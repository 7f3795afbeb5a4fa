"""Runs a real Daemon in-process for tests: built from ntp.conf text, serving on an ephemeral
loopback port, its loop in a thread, never touching the clock."""

import signal
import threading

from stratum1 import daemon as daemon_mod
from stratum1.cli import build_parser
from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.daemon import Daemon, load_config, options_from_args

LOCAL_CONF = "server 127.127.1.0\nfudge 127.127.1.0 stratum 10\n"


def start(tmp_path, monkeypatch, text=LOCAL_CONF, extra_args=()):
    """Start a daemon on 127.0.0.1:0 from ``text``; returns (daemon, thread, conf path)."""
    # Refclock start-up polls every 50 ms instead of 2 s: sources are selectable in a blink.
    monkeypatch.setattr(daemon_mod, "STARTUP_POLL_S", 0.05)
    conf = tmp_path / "ntp.conf"
    conf.write_text(text)
    args = build_parser().parse_args(
        ["run", "-n", "--no-discipline", "-c", str(conf), "--listen", "127.0.0.1:0", *extra_args]
    )
    opts = options_from_args(args)
    d = Daemon(load_config(opts), opts, FrozenDisciplineClock(SystemClock()))
    d.start()
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    return d, thread, conf


def stop(d, thread):
    """Stop the daemon and give the signal handlers back."""
    d.stop()
    thread.join(5)
    d.close()
    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
