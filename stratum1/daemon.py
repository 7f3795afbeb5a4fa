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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .association import STARTUP_POLL_S, STARTUP_POLLS
from .atomicfile import write_atomically
from .clock import Clock, FrozenDisciplineClock, SystemClock
from .eventloop import EventLoop, Timer
from .sdnotify import Notifier
from .snapshot import UNSYNCHRONIZED, SystemSnapshot

log = logging.getLogger("stratum1")

DEMO_CONFIG = """\
# stratum1 demo: a simulated GPS receiver with PPS, served on loopback, clock untouched.
refclock sim unit 0 flag1 1 minpoll 4 maxpoll 4 prefer refid GPS
"""
DEMO_LISTEN = "127.0.0.1:11123"
#: How errors in lines added with ``ntpq :config`` are located.
RUNTIME_SOURCE = "<ntpq :config>"

#: The LOCAL driver's type: only a fallback, as in ntpd.
LOCAL_CLOCK_TYPE = 1
#: ntpd's default interface rescan interval (-U), seconds.
DEFAULT_RESCAN_S = 300
#: How often idle clients are aged out of the MRU list, seconds.
MRU_EXPIRE_S = 60.0


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
    metrics: str | None = None
    update_interval: int | None = None  # -U: interface rescan, s (0: never)
    workers: int = 0  # --workers: extra SO_REUSEPORT serving processes per --listen address


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
        update_interval=args.update_interval,
        metrics=getattr(args, "metrics", None),
        workers=getattr(args, "workers", 0) or 0,
    )
    opts.listen = [parse_listen(s) for s in args.listen]
    if opts.workers < 0:
        raise ValueError("--workers: expected a number of processes, 0 or more")
    if opts.workers and not opts.listen:
        raise ValueError("--workers needs --listen ADDR:PORT (workers serve fixed addresses)")
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


def load_config(opts: RunOptions, runtime_lines: Sequence[str] = ()) -> Any:
    """Parse the configuration (plus lines added at run time with ``ntpq :config``); raise
    ConfigError listing every error."""
    from .config.diagnostics import ConfigError
    from .config.parser import parse_file, parse_text, with_overrides

    if runtime_lines:
        # The file (or the demo text) first, then the run-time lines, through the one parser.
        base = opts.config_text or f'includefile "{os.path.abspath(str(opts.conffile))}"\n'
        config, diagnostics = parse_text(base + "\n".join(runtime_lines) + "\n", RUNTIME_SOURCE)
    elif opts.config_text is not None:
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
    write_atomically(path, f"{os.getpid()}\n")


class Daemon:
    """One running stratum1: its loop, sources, system process and servers."""

    def __init__(self, config: Any, opts: RunOptions, clock: Clock) -> None:
        self.config = config
        self.opts = opts
        self.clock = clock
        self.loop = EventLoop(monotonic_ns=clock.monotonic_ns)
        self.snapshot: SystemSnapshot = UNSYNCHRONIZED
        self._bound: dict[tuple[str, int], tuple[Any, bool]] = {}
        self.sources: list[_RefclockSource] = []
        self.system: Any = None
        self.discipline: Any = None
        self.drift: Any = None
        self.leap: Any = None
        self.leap_indicator = 0
        self.exit_code = 0
        self._peer_name: str | None = None
        self._tick: Timer | None = None
        self._assoc_ids = 0
        self._rescan: Timer | None = None
        self._watchdog: Timer | None = None
        self.notifier = Notifier()
        self.control: Any = None
        self.access: Any = None
        self.runtime_lines: list[str] = []
        self._reachable: dict[int, bool] = {}
        self.auth: Any = None
        self._mru_timer: Timer | None = None
        self.hotplug: Any = None
        self.upstream: Any = None
        self.stats: Any = None
        self.metrics: Any = None
        self._stats_timer: Timer | None = None
        self.started_ns = clock.now_ns()
        self._pools: dict[tuple[str, int], Any] = {}
        self._slew_timer: Timer | None = None
        from .sysstats import SysStats, server_counters

        self.sysstats = SysStats(self.started_ns, lambda: server_counters(self.servers, self.access))

    # -- construction -------------------------------------------------------------------------
    def start(self) -> None:
        self._build_access(self.config)
        self._build_system()
        self._start_workers()
        self._start_stats()
        self._open_servers()
        self._start_sources(self.config)
        self._tick = self.loop.call_every(1.0, self.housekeeping)
        self._mru_timer = self.loop.call_every(MRU_EXPIRE_S, self._expire_mru)
        rescan = self.opts.update_interval
        if rescan is None:
            rescan = DEFAULT_RESCAN_S
        if rescan > 0 and not self.opts.listen:
            self._rescan = self.loop.call_every(float(rescan), self._open_servers)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGINT, self.stop)
        if self.notifier.watchdog_s:
            self._watchdog = self.loop.call_every(self.notifier.watchdog_s / 2, self.notifier.watchdog)
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """One line for systemd's STATUS (``systemctl status``)."""
        snap = self.snapshot
        peer = self.system.system_peer if self.system is not None else None
        if peer is None or not snap.synchronized:
            return f"serving on {len(self.servers)} socket(s), not synchronised"
        return (
            f"synchronised to {peer.name}, stratum {snap.stratum}, "
            f"offset {snap.offset * 1e6:+.1f} us, jitter {snap.jitter * 1e6:.1f} us"
        )

    def _build_system(self) -> None:
        from .driftfile import DriftFile
        from .kerneldisc import KernelDiscipline, wants_kernel
        from .leap import LeapScheduler
        from .system import SystemProcess, measure_precision

        tinker = getattr(self.config, "tinker", None)
        step = getattr(tinker, "step", None)
        if step is None:
            step = 0.128
        if self.opts.slew_only:
            step = 600.0
        initial_ppm = None
        if self.config.driftfile:
            self.drift = DriftFile(self.config.driftfile)
            initial_ppm = self.drift.load()
            if initial_ppm is not None:
                log.info("frequency %.3f PPM from %s", initial_ppm, self.config.driftfile)
        extra = {}
        for name in ("stepout", "panic"):
            value = getattr(tinker, name, None)
            if value is not None:
                extra[name] = value
        self.discipline = KernelDiscipline(
            self.clock,
            kernel=wants_kernel(self.config.enabled),
            step_threshold=step,
            allow_first_big_step=self.opts.allow_big_step,
            initial_frequency_ppm=initial_ppm,
            **extra,
        )
        self.system = SystemProcess(
            tos=getattr(self.config, "tos", None),
            precision=measure_precision(self.clock.now_ns),
            discipline=self.discipline,
        )
        self.leap = LeapScheduler(kernel=self._kernel_leap())
        self._load_leapfile(self.config.leapfile)
        self._publish()

    def _build_access(self, config: Any) -> None:
        """restrict/discard (access control and rate limiting) and the symmetric keys."""
        from .auth import Authenticator
        from .restrict import AccessControl

        auth, keyfile = Authenticator.from_config(config)  # KeysError: unreadable file
        if keyfile is not None:
            for d in keyfile.diagnostics:
                log.log(logging.ERROR if d.is_error else logging.WARNING, "%s", d)
        if self.access is None:
            self.access = AccessControl.from_config(config)
        else:
            # Keep the MRU list (who asked, how often) across a reload.
            from .restrict import RestrictTable

            self.access.reload(RestrictTable.from_config(config.restrict))
        self.auth = auth

    def authenticate(self, covered: bytes, mac: Any, host: str) -> Any:
        """The servers' MAC hook: a signer for the request's key, or None (crypto-NAK)."""
        return self.auth(covered, mac, host)

    def peer_packet(self, data: bytes, address: tuple, rx_ns: int) -> bytes | None:
        """Modes 1, 2, 4, 5 arriving on a server socket belong to the network sources."""
        if self.upstream is None:
            return None
        return self.upstream.peer_handler(data, address, rx_ns)

    def authenticate_control(self, covered: bytes, mac: bytes) -> Any:
        """Mode-6 writes (``:config``) are signed with the ``controlkey`` and no other key."""
        from .packet import Mac

        keyid = int.from_bytes(mac[:4], "big")
        if self.config.controlkey is None or keyid != self.config.controlkey:
            return None
        return self.auth(covered, Mac(keyid, bytes(mac[4:])), "")

    def _expire_mru(self) -> None:
        limiter = self.access.limiter
        if limiter is not None:
            limiter.expire(self.clock.now_ns())

    def _start_stats(self) -> None:
        from .stats import StatsWriter, SysCounters

        self.stats = StatsWriter(self.config, self.clock)
        self._stats_timer = self.stats.attach(
            self.loop, lambda: SysCounters.from_server_stats(s.stats for s in self.servers))
        if self.opts.metrics:
            # Metrics are a diagnostic: without them the server must still serve time.
            try:
                from .metrics import daemon_state, start_metrics

                self.metrics = start_metrics(
                    self.loop, self.opts.metrics, lambda: daemon_state(self, self.started_ns)
                )
            except ImportError:
                log.error("--metrics needs prometheus-client (pip install stratum1[metrics])")
            except (OSError, ValueError) as exc:
                log.error("metrics endpoint %s not started: %s", self.opts.metrics, exc)

    def _kernel_leap(self) -> bool:
        """The kernel inserts the leap second when we discipline through it."""
        return bool(self.clock.can_adjust and hasattr(self.clock, "set_leap"))

    def _load_leapfile(self, path: str | None) -> None:
        from .leapfile import LeapFileError, load_leapfile

        if not path:
            self.leap.set_table(None)
            return
        try:
            table = load_leapfile(path)
        except (OSError, LeapFileError) as exc:
            # Keep the table we had: a broken update of the file must not forget a known leap.
            log.error("leap file %s not loaded: %s", path, exc)
            return
        self.leap.set_table(table)
        message = table.expiry_message(self.clock.now_ns())
        if message is not None:
            level = logging.ERROR if message[0] == "error" else logging.WARNING
            log.log(level, "%s: %s", path, message[1])

    def _bindings(self) -> list[tuple[tuple[str, int], bool]]:
        """((address, port), drop) for every socket to serve on: --listen, else the
        ``interface`` rules over this host's addresses on port 123."""
        from .interfaces import local_addresses, plan_bindings

        if self.opts.listen:
            return [(address, False) for address in self.opts.listen]
        plan = plan_bindings(
            self.config.interfaces,
            local_addresses(),
            ipv4=not self.opts.ipv6_only,
            ipv6=not self.opts.ipv4_only,
        )
        return [((b.address, 123), b.drop) for b in plan]

    def _start_workers(self) -> None:
        """Fork the ``--workers`` serving processes, before any thread or main socket exists
        (a fork copies only the calling thread and should not inherit our sockets)."""
        if not self.opts.workers:
            return
        from .workers import WorkerPool

        for address in self.opts.listen:
            pool = WorkerPool(
                address,
                self.opts.workers,
                self.clock,
                access=self.access.server_hook,
                authenticate=self.authenticate,
                server_options={"kernel_timestamps": _is_system_clock(self.clock)},
            )
            pool.start(self.snapshot)
            self._pools[address] = pool

    def _open_servers(self) -> None:
        """Open a server socket for every binding not open yet; close those no longer wanted
        (addresses that went away, rules that changed). Run at start, on reload and every
        ``-U`` seconds, so addresses that come and go (DHCP, hotplug) are followed."""
        from .server import NtpServer

        if self.control is None:
            from .control import Control
            from .controlvars import DaemonView
            from .mrulist import MruList

            self.control = Control(
                DaemonView(self),
                mru=MruList(lambda: self.access.mru_entries()),
                authenticate=self.authenticate_control,
                configure=self.configure,
            )
        wanted = dict(self._bindings())
        for address, (server, drop) in list(self._bound.items()):
            if wanted.get(address) != drop:
                log.info("no longer serving on %s", address[0])
                server.close()
                del self._bound[address]
        for address, drop in wanted.items():
            if address in self._bound:
                continue
            server = NtpServer(
                address,
                self.get_snapshot,
                self.clock,
                kernel_timestamps=_is_system_clock(self.clock),
                control_handler=self.control.handle,
                authenticate=self.authenticate,
                peer_handler=self.peer_packet,
                access=_drop_all if drop else self.access.server_hook,
                reuse_port=address in self._pools,
            )
            try:
                server.attach(self.loop)
            except OSError as exc:
                if self.opts.listen or address[0] in ("0.0.0.0", "::") and not self._bound:
                    raise
                log.warning("not serving on %s (%s)", address[0], exc.strerror)
                continue
            self._bound[address] = (server, drop)
            pool = self._pools.get(address)
            if pool is not None:
                pool.attach(self.loop, server, self.get_snapshot)

    @property
    def servers(self) -> list[Any]:
        """The open NtpServer sockets."""
        return [server for server, _drop in self._bound.values()]

    def _start_sources(self, config: Any) -> None:
        from .refclock.hotplug import HotplugWatcher

        # One udev watcher reopens any unit whose device comes back (USB GPS replugged).
        self.hotplug = HotplugWatcher(self.loop)
        for refclock in config.refclocks:
            source = _RefclockSource(self, refclock, assoc_id=self._next_assoc_id())
            self.sources.append(source)
            self.system.add(source.association)
            self.hotplug.watch(source.unit)
            source.start()
        if self.sources:
            self.hotplug.start()
        self._start_upstream(config)

    def _start_upstream(self, config: Any) -> None:
        """Network sources: server, pool and peer lines (broadcast and manycast are not
        carried)."""
        from .upstream import Upstream

        network = [a for a in config.associations if a.kind in ("server", "pool", "peer")]
        if not network:
            return
        self.upstream = Upstream(
            self.loop,
            self.clock,
            self.system,
            on_update=self.source_polled,
            next_assoc_id=self._next_assoc_id,
            authenticator=self.auth,
            get_snapshot=self.get_snapshot,
            ipv4=not self.opts.ipv6_only,
            ipv6=not self.opts.ipv4_only,
            kernel_timestamps=_is_system_clock(self.clock),
            pool_size=max(1, config.tos.maxclock - len(config.refclocks)),
        )
        for assoc in network:
            try:
                self.upstream.add(assoc)
            except ValueError as exc:  # e.g. a key that is not in the keys file
                log.error("%s: %s %s not started: %s", assoc.location, assoc.kind, assoc.host, exc)

    def _next_assoc_id(self) -> int:
        self._assoc_ids += 1
        return self._assoc_ids

    def _stop_sources(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        if self.hotplug is not None:
            self.hotplug.stop()
            self.hotplug = None
        for source in self.sources:
            source.stop()
            self.system.remove(source.association.assoc_id)
        self.sources = []

    def get_snapshot(self) -> SystemSnapshot:
        return self.snapshot

    def pulse_reference(self, local_ns: int) -> int | None:
        """Numbers PPS pulses from the system clock while it is synchronised."""
        return local_ns if self.snapshot.synchronized else None

    def source_polled(self, association: Any = None) -> None:
        """A source was polled: log when it becomes reachable or unreachable, run selection
        and the discipline, publish the snapshot."""
        if association is not None:
            reachable = association.reach != 0
            if reachable != self._reachable.get(association.assoc_id, False):
                if reachable:
                    log.info("%s reachable", association.name)
                else:
                    log.warning("%s unreachable (reach 0)", association.name)
                self._reachable[association.assoc_id] = reachable
        self.system.update(self.clock.now_ns())
        self._after_update()

    def housekeeping(self) -> None:
        """Once a second: selection (so fallbacks and orphan mode can take over), leap
        seconds, the drift file, and the exits that -q and the panic threshold ask for."""
        now = self.clock.now_ns()
        self.system.update(now)
        self.discipline.set_hardpps(self._hardpps_bound(), now)
        self.discipline.tick(now, self.system.snapshot)
        self.sysstats.tick(now)
        self._leap_tick(now)
        if self.drift is not None and self.clock.can_adjust:
            self.drift.maybe_write(
                self.discipline.frequency_ppm(), now, sigma_ppm=self.discipline.frequency_sigma_ppm
            )
        self._after_update()

    def _hardpps_bound(self) -> bool:
        """A PPS unit bound the kernel hardpps consumer to its device (flag3)."""
        for source in self.sources:
            driver = source.unit.driver
            if driver is not None and driver.status().get("hardpps"):
                return True
        return False

    def _schedule_slew_end(self) -> None:
        """End a fast slew when it is due: a timer at the moment the clock will have
        absorbed the correction, so the tick length is put back on time."""
        if self._slew_timer is not None:
            self._slew_timer.cancel()
            self._slew_timer = None
        left = self.discipline.service_slew()
        if left is not None:
            self._slew_timer = self.loop.call_later(left, self._end_slew)

    def _end_slew(self) -> None:
        self._slew_timer = None
        self._schedule_slew_end()

    def _after_update(self) -> None:
        system = self.system
        self._schedule_slew_end()
        self._publish()
        self.stats.record_loop(self.clock.now_ns(), system.snapshot, self.discipline)
        if system.panic and not self.opts.allow_big_step:
            log.error(
                "time offset exceeds the panic threshold: set the clock by hand or start with -g;"
                " exiting"
            )
            self.exit_code = 1
            self.loop.stop()
        if self.opts.once and self.discipline.clock_set:
            log.info("clock set (-q): exiting")
            self.loop.stop()
        peer = system.system_peer
        name = peer.name if peer is not None else None
        if name != self._peer_name:
            if name is None:
                log.warning("no source selected: serving as unsynchronised")
            else:
                log.info("synchronised to %s, stratum %d", name, system.snapshot.stratum)
            self._peer_name = name
            self.notifier.status(self.status_line())
        if system.last_action == "step":
            log.warning("clock stepped")

    def _leap_tick(self, now: int) -> None:
        system = self.system
        if system.snapshot.synchronized:
            self.leap.vote([system.leap_vote], now)
        decision = self.leap.update(now)
        if self.leap.kernel:
            self.clock.set_leap(decision.kernel)  # type: ignore[attr-defined]
        if decision.hold_step_ns and self.clock.can_adjust:
            log.warning("leap second: stepping the clock by %+d s", decision.hold_step_ns // 10**9)
            self.clock.step(decision.hold_step_ns)
            self.discipline.notify_leap(decision.hold_step_ns)
        if decision.indicator != self.leap_indicator:
            if decision.indicator:
                log.warning("leap second %s announced (%s)",
                            "insertion" if decision.indicator == 1 else "deletion", decision.source)
            self.leap_indicator = decision.indicator

    def _publish(self) -> None:
        snapshot = self.system.snapshot
        if snapshot.synchronized and snapshot.leap != self.leap_indicator:
            snapshot = replace(snapshot, leap=self.leap_indicator)
        self.snapshot = snapshot

    # -- control ------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the configuration; on any error keep running the current one."""
        log.info("reloading configuration")
        self.notifier.send(reloading=1)
        problem = self._reconfigure(self.runtime_lines)
        if problem is None:
            log.info("configuration reloaded")
            self.notifier.send(ready=1, status=self.status_line())
        else:
            log.error("reload failed: keeping the running configuration")
            self.notifier.send(ready=1, status="reload failed: " + self.status_line())

    def configure(self, text: str, address: tuple) -> str:
        """``ntpq :config``: add configuration lines at run time (the control key signed the
        request; ``restrict nomodify`` still refuses it). Answers ntpd's words."""
        from .control import OP_CONFIGURE
        from .restrict import control_allowed

        if not control_allowed(self.access.flags_for(address[0], address[1]), OP_CONFIGURE):
            return "Config Failed: restricted (nomodify)"
        lines = self.runtime_lines + [line for line in text.splitlines() if line.strip()]
        problem = self._reconfigure(lines)
        if problem is not None:
            return f"Config Failed: {problem}"
        log.info("run-time configuration from %s: %s", address[0], text.strip())
        self.runtime_lines = lines
        return "Config Succeeded"

    def _reconfigure(self, runtime_lines: Sequence[str]) -> str | None:
        """Parse and apply a new configuration; on any problem change nothing and say why."""
        from .config.diagnostics import ConfigError

        try:
            new = load_config(self.opts, runtime_lines)
        except ConfigError as exc:
            for d in exc.diagnostics:
                log.error("%s", d)
            return "; ".join(str(d) for d in exc.diagnostics)
        except OSError as exc:
            log.error("cannot read the configuration: %s", exc)
            return str(exc)
        try:
            self._build_access(new)
        except Exception as exc:  # an unreadable keys file: keep everything as it was
            log.error("%s", exc)
            return str(exc)
        if (
            new.refclocks != self.config.refclocks
            or new.associations != self.config.associations
            or new.keys != self.config.keys
            or new.trustedkeys != self.config.trustedkeys
        ):
            self._stop_sources()
            self._start_sources(new)
        self._load_leapfile(new.leapfile)
        self.stats.reconfigure(new)
        self.config = new
        from .kerneldisc import wants_kernel

        self.discipline.set_kernel(wants_kernel(new.enabled), self.clock.now_ns())
        self._open_servers()
        return None

    def stop(self) -> None:
        log.info("exiting")
        self.notifier.stopping()
        self.loop.stop()

    def run(self) -> int:
        self.loop.run()
        return self.exit_code

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.stats is not None:
            self.stats.close()
        for timer in (self._tick, self._rescan, self._watchdog, self._mru_timer, self._stats_timer,
                      self._slew_timer):
            if timer is not None:
                timer.cancel()
        if self.discipline is not None:
            self.discipline.close(self.clock.now_ns())  # the kernel PPS loop must not outlive us
        self._stop_sources()
        for pool in self._pools.values():
            pool.stop()
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
            config, daemon.loop, daemon.clock, pulse_reference=daemon.pulse_reference,
            clockstats=daemon.stats.clockstats_sink,
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
            self.association.receive(
                m, now, stratum=self.unit.stratum, leap=m.leap, root_dispersion=self.unit.rootdisp
            )
            self.daemon.stats.record_peer(now, self.association, address=self.unit.address)
        self.daemon.source_polled(self.association)
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.unit.stop()


def _drop_all(_address: Any, _mode: int, _version: int, _rx_ns: int, _has_mac: bool) -> str:
    """``interface drop``: the socket is open (nobody else gets the port) and reads nothing."""
    return "drop"


def _is_system_clock(clock: Clock) -> bool:
    """Kernel receive stamps are CLOCK_REALTIME: usable only when we serve the system clock."""
    from .sysclock import KernelClock

    inner = getattr(clock, "_inner", None)
    if inner is not None:
        return _is_system_clock(inner)
    return isinstance(clock, (SystemClock, KernelClock))


CAP_SYS_TIME = 25


def has_cap_sys_time() -> bool:
    """Whether this process may set the clock (CAP_SYS_TIME in its effective set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_TIME & 1)
    except OSError:
        pass
    return os.geteuid() == 0


class _JournalFormatter(logging.Formatter):
    """``<priority>name: message`` for journald; each traceback line carries the prefix too."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>"
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging(opts: RunOptions) -> None:
    level = logging.DEBUG if opts.debug else logging.INFO
    handler: logging.Handler
    if opts.logfile:
        handler = logging.FileHandler(opts.logfile)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        if os.environ.get("JOURNAL_STREAM"):
            # stderr goes to the journal: it adds time and pid, and a "<N>" prefix
            # (sd-daemon(3)) files each line at its priority (journalctl -p warning).
            handler.setFormatter(_JournalFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def make_clock(opts: RunOptions) -> Clock:
    """The system clock, adjusted through adjtimex; --no-discipline never adjusts it."""
    if opts.no_discipline:
        return FrozenDisciplineClock(SystemClock())
    from .sysclock import KernelClock

    if not has_cap_sys_time():
        log.error(
            "no permission to adjust the clock (CAP_SYS_TIME): serving without disciplining it;"
            " run as root, grant the capability (see the systemd unit), or use --no-discipline"
        )
        return FrozenDisciplineClock(SystemClock())

    from .sysclock import TICK_SLEW_RATE

    # Offsets below the step threshold are slewed at up to chronyd's rate (tick + frequency).
    return KernelClock(adjust=True, max_slew_rate=TICK_SLEW_RATE)


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
    from .keys import KeysError

    try:
        daemon.start()
    except (OSError, KeysError) as exc:
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
