"""The daemon: builds the parts from a configuration and wires them to one event loop.

Refclock units feed associations on poll timers; the system process selects and disciplines and
publishes a snapshot; the servers answer clients from that snapshot. SIGHUP reloads the config
(a reload with errors keeps the running one); SIGTERM and SIGINT exit cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock, FrozenDisciplineClock, SystemClock
from .eventloop import EventLoop, Timer
from .snapshot import UNSYNCHRONIZED, SystemSnapshot

log = logging.getLogger("stratum1")

DEMO_CONFIG = """\
# stratum1 demo: a simulated GPS receiver with PPS, served on loopback, clock untouched.
refclock sim unit 0 flag1 1 minpoll 4 maxpoll 4 prefer refid GPS
"""
DEMO_LISTEN = "127.0.0.1:11123"

#: Refclock associations poll this often (s) until their filter is full, then at 2**poll:
#: a refclock source is usable within seconds of start, like a server with iburst.
STARTUP_POLL_S = 2.0
#: The LOCAL driver's type: only a fallback, as in ntpd.
LOCAL_CLOCK_TYPE = 1
STARTUP_POLLS = 8


@dataclass
class RunOptions:
    """What the command line asks of ``stratum1 run``."""

    conffile: str | None = None
    config_text: str | None = None  # --demo: a built-in configuration
    listen: list[tuple[str, int]] = field(default_factory=list)
    no_discipline: bool = False
    allow_big_step: bool = False
    once: bool = False
    slew_only: bool = False
    pidfile: str | None = None
    logfile: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    ipv4_only: bool = False
    ipv6_only: bool = False
    debug: int = 0
    demo: bool = False


def parse_listen(spec: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[v6addr]:PORT`` to a (host, port) tuple."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise ValueError(f"--listen {spec!r}: expected ADDR:PORT")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {spec!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen {spec!r}: port out of range")
    return host, number


def options_from_args(args: argparse.Namespace) -> RunOptions:
    from .cli import DEFAULT_CONFIG

    opts = RunOptions(
        conffile=args.conffile,
        no_discipline=args.no_discipline,
        allow_big_step=args.allow_big_step,
        once=args.once,
        slew_only=args.slew_only,
        pidfile=args.pidfile,
        logfile=args.logfile,
        ipv4_only=args.ipv4_only,
        ipv6_only=args.ipv6_only,
        debug=args.debug,
        demo=args.demo,
    )
    opts.listen = [parse_listen(s) for s in args.listen]
    for name in ("driftfile", "statsdir", "keys", "logfile", "pidfile"):
        value = getattr(args, name, None)
        if value is not None:
            opts.overrides[name] = value
    if args.demo:
        opts.no_discipline = True
        if not opts.listen:
            opts.listen = [parse_listen(DEMO_LISTEN)]
        if opts.conffile is None:
            opts.config_text = DEMO_CONFIG
    elif opts.conffile is None:
        opts.conffile = DEFAULT_CONFIG
    return opts


def load_config(opts: RunOptions) -> Any:
    """Parse the configuration; raise ConfigError listing every error."""
    from .config.diagnostics import ConfigError
    from .config.parser import parse_file, parse_text, with_overrides

    if opts.config_text is not None:
        config, diagnostics = parse_text(opts.config_text, "<demo>")
    else:
        assert opts.conffile is not None
        config, diagnostics = parse_file(opts.conffile)
    errors = [d for d in diagnostics if d.severity == "error"]
    for d in diagnostics:
        if d.severity != "error":
            log.warning("%s", d)
    if errors:
        raise ConfigError(tuple(errors))
    if opts.overrides:
        config = with_overrides(config, **opts.overrides)
    return config


def write_pidfile(path: str) -> None:
    """Write our pid atomically (temporary file + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pid.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Daemon:
    """One running stratum1: its loop, sources, system process and servers."""

    def __init__(self, config: Any, opts: RunOptions, clock: Clock) -> None:
        self.config = config
        self.opts = opts
        self.clock = clock
        self.loop = EventLoop(monotonic_ns=clock.monotonic_ns)
        self.snapshot: SystemSnapshot = UNSYNCHRONIZED
        self.servers: list[Any] = []
        self.sources: list[_RefclockSource] = []
        self.system: Any = None
        self.exit_code = 0

    # -- construction -------------------------------------------------------------------------
    def start(self) -> None:
        self._build_system()
        self._open_servers()
        self._start_sources(self.config)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGINT, self.stop)

    def _build_system(self) -> None:
        from .discipline import Discipline
        from .system import SystemProcess, measure_precision

        tinker = getattr(self.config, "tinker", None)
        step = getattr(tinker, "step", None) or 0.128
        if self.opts.slew_only:
            step = 600.0
        discipline = Discipline(
            self.clock,
            step_threshold=step,
            allow_first_big_step=self.opts.allow_big_step,
        )
        self.system = SystemProcess(
            tos=getattr(self.config, "tos", None),
            precision=measure_precision(self.clock.now_ns),
            discipline=discipline,
        )
        self.snapshot = self.system.snapshot

    def _listen_addresses(self) -> list[tuple[str, int]]:
        if self.opts.listen:
            return list(self.opts.listen)
        addresses = []
        if not self.opts.ipv6_only:
            addresses.append(("0.0.0.0", 123))
        if not self.opts.ipv4_only:
            addresses.append(("::", 123))
        return addresses

    def _open_servers(self) -> None:
        from .server import NtpServer

        for address in self._listen_addresses():
            server = NtpServer(
                address,
                self.get_snapshot,
                self.clock,
                kernel_timestamps=isinstance(_innermost(self.clock), SystemClock),
            )
            try:
                server.attach(self.loop)
            except OSError as exc:
                if address[0] == "::" and not self.opts.listen:
                    log.warning("IPv6 not available (%s); serving IPv4 only", exc.strerror)
                    continue
                raise
            self.servers.append(server)

    def _start_sources(self, config: Any) -> None:
        for refclock in config.refclocks:
            source = _RefclockSource(self, refclock, assoc_id=len(self.sources) + 1)
            self.sources.append(source)
            self.system.add(source.association)
            source.start()

    def get_snapshot(self) -> SystemSnapshot:
        return self.snapshot

    def pulse_reference(self, local_ns: int) -> int | None:
        """Numbers PPS pulses from the system clock while it is synchronised."""
        return local_ns if self.snapshot.synchronized else None

    def source_polled(self) -> None:
        """A source has new data: run selection and the discipline, publish the snapshot."""
        now = self.clock.now_ns()
        self.snapshot = self.system.update(now)

    # -- control ------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the configuration; on any error keep running the current one."""
        from .config.diagnostics import ConfigError

        log.info("reloading configuration")
        try:
            new = load_config(self.opts)
        except ConfigError as exc:
            for d in exc.diagnostics:
                log.error("%s", d)
            log.error("reload failed: keeping the running configuration")
            return
        except OSError as exc:
            log.error("reload failed (%s): keeping the running configuration", exc)
            return
        if new.refclocks != self.config.refclocks:
            for source in self.sources:
                source.stop()
                self.system.remove(source.association.assoc_id)
            self.sources = []
            self._start_sources(new)
        self.config = new
        log.info("configuration reloaded")

    def stop(self) -> None:
        log.info("exiting")
        self.loop.stop()

    def run(self) -> int:
        self.loop.run()
        return self.exit_code

    def close(self) -> None:
        for source in self.sources:
            source.stop()
        for server in self.servers:
            server.close()
        self.loop.close()


class _RefclockSource:
    """A refclock unit and its association, polled on the association's interval."""

    def __init__(self, daemon: Daemon, config: Any, assoc_id: int) -> None:
        from .association import Association
        from .refclock.unit import RefclockUnit

        self.daemon = daemon
        self.unit = RefclockUnit(
            config, daemon.loop, daemon.clock, pulse_reference=daemon.pulse_reference
        )
        unit = self.unit
        self.association = Association(
            assoc_id,
            config.address,
            refclock=True,
            stratum=unit.stratum,
            refid=unit.refid.encode("ascii", "replace")[:4].ljust(4, b"\0"),
            precision=unit.precision,
            minpoll=unit.minpoll,
            maxpoll=unit.maxpoll,
            prefer=unit.prefer,
            noselect=unit.noselect,
            true=bool(getattr(config, "true", False)),
            pps=unit.driver_cls.is_pps,
            local_clock=config.type == LOCAL_CLOCK_TYPE,
        )
        self._timer: Timer | None = None
        self._polls = 0

    def start(self) -> None:
        self.unit.start()
        self._schedule()

    def _schedule(self) -> None:
        if self._polls < STARTUP_POLLS:
            delay = STARTUP_POLL_S
        else:
            delay = float(2 ** self.association.poll)
        self._timer = self.daemon.loop.call_later(delay, self._poll)

    def _poll(self) -> None:
        self._polls += 1
        now = self.daemon.clock.now_ns()
        m = self.unit.poll(now)
        if m is None:
            self.association.poll_missed(now)
        else:
            self.association.receive(m, now, stratum=self.unit.stratum, leap=m.leap)
        self.daemon.source_polled()
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.unit.stop()


def _innermost(clock: Clock) -> Clock:
    inner = getattr(clock, "_inner", None)
    return clock if inner is None else _innermost(inner)


def setup_logging(opts: RunOptions) -> None:
    level = logging.DEBUG if opts.debug else logging.INFO
    handler: logging.Handler
    if opts.logfile:
        handler = logging.FileHandler(opts.logfile)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def make_clock(opts: RunOptions) -> Clock:
    """The system clock, adjustable only when allowed; --no-discipline never adjusts."""
    if opts.no_discipline:
        return FrozenDisciplineClock(SystemClock())
    try:
        from .sysclock import AdjustableSystemClock
    except ImportError:  # pragma: no cover - until the adjtimex clock lands
        log.warning("clock discipline not available: serving without adjusting the clock")
        return FrozenDisciplineClock(SystemClock())
    return AdjustableSystemClock()


def run_from_args(args: argparse.Namespace) -> int:
    from .config.diagnostics import ConfigError

    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"stratum1: {exc}", file=sys.stderr)
        return 2
    setup_logging(opts)
    try:
        config = load_config(opts)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        print("stratum1: configuration has errors; not starting", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"stratum1: cannot read {opts.conffile}: {exc.strerror}", file=sys.stderr)
        return 1
    if opts.pidfile is None:
        opts.pidfile = getattr(config, "pidfile", None)
    daemon = Daemon(config, opts, make_clock(opts))
    try:
        daemon.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        daemon.close()
        return 1
    if opts.pidfile:
        write_pidfile(opts.pidfile)
    if opts.demo:
        host, port = opts.listen[0]
        print(
            f"stratum1 demo: serving simulated GPS time on {host}:{port} (clock untouched).\n"
            f"  query it:  stratum1 query {host}:{port}\n"
            "  stop with Ctrl-C",
            file=sys.stderr,
            flush=True,
        )
    try:
        return daemon.run()
    finally:
        daemon.close()
        if opts.pidfile:
            try:
                os.unlink(opts.pidfile)
            except OSError:
                pass
