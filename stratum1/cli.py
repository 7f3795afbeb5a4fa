"""The ``stratum1`` command line: run the daemon, check a config, list drivers, show the version."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

DEFAULT_CONFIG = "/etc/stratum1/ntp.conf"
DEMO_LISTEN = "127.0.0.1:11123"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    # ntpd's letters where the meaning is the same (ntpd(8)).
    p.add_argument("-c", dest="conffile", metavar="FILE", help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-n", dest="foreground", action="store_true", help="stay in the foreground (stratum1 never forks anyway)")
    p.add_argument("-g", dest="allow_big_step", action="store_true", help="allow the first adjustment to exceed the panic threshold")
    p.add_argument("-q", dest="once", action="store_true", help="set the clock once and exit (0 on success)")
    p.add_argument("-x", dest="slew_only", action="store_true", help="raise the step threshold to 600 s (slew instead of step)")
    p.add_argument("-p", dest="pidfile", metavar="FILE", help="write the process id to FILE")
    p.add_argument("-l", dest="logfile", metavar="FILE", help="log to FILE instead of stderr")
    p.add_argument("-f", dest="driftfile", metavar="FILE", help="frequency (drift) file")
    p.add_argument("-s", dest="statsdir", metavar="DIR", help="statistics directory")
    p.add_argument("-k", dest="keys", metavar="FILE", help="symmetric keys file")
    p.add_argument("-U", dest="update_interval", metavar="SECONDS", type=int, help="interface rescan interval (0: never)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="ipv4_only", action="store_true", help="use IPv4 only")
    fam.add_argument("-6", dest="ipv6_only", action="store_true", help="use IPv6 only")
    p.add_argument("-d", dest="debug", action="count", default=0, help="more log detail (repeatable)")
    p.add_argument("--no-discipline", action="store_true", help="serve time but never adjust the clock")
    p.add_argument("--listen", action="append", metavar="ADDR:PORT", default=[],
                   help="serve on this address and port instead of port 123 everywhere (repeatable)")
    p.add_argument("--workers", metavar="N", type=int, default=0,
                   help="answer clients in N extra SO_REUSEPORT processes (needs --listen)")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (needs prometheus-client)")
    p.add_argument("--demo", action="store_true",
                   help=f"run on the simulated GPS+PPS receiver, serving on {DEMO_LISTEN}, clock untouched")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stratum1", description="A stratum-1 NTP time server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    _add_run_options(run)

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = csub.add_parser("check", help="check a configuration file and summarise it")
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG)

    drivers = sub.add_parser("drivers", help="reference-clock drivers")
    dsub = drivers.add_subparsers(dest="drivers_command", metavar="SUBCOMMAND")
    dlist = dsub.add_parser("list", help="every driver, configured unit, device and live status")
    dlist.add_argument("-c", dest="conffile", metavar="FILE", default=None)
    dlist.add_argument("--json", action="store_true", help="machine-readable output")
    dlist.add_argument("--host", metavar="HOST[:PORT]", default=None,
                       help="ask this daemon for live status (default: the local one on port 123)")

    q = sub.add_parser("query", help="ask an NTP server for the time (any port)")
    q.add_argument("server", help="HOST, HOST:PORT or [IPv6]:PORT")
    q.add_argument("-n", dest="count", type=int, default=1, help="number of queries (1 s apart)")
    q.add_argument("-t", dest="timeout", type=float, default=2.0, help="seconds to wait for each reply")

    from .status import add_arguments as add_status_arguments

    status = sub.add_parser("status", help="is the server synchronised? (exit 0 yes, 1 no, 2 unknown)")
    add_status_arguments(status)
    peers = sub.add_parser("peers", help="the sources, as ntpq -p shows them")
    add_status_arguments(peers)

    sub.add_parser("version", help="print the version")
    return parser


def cmd_config_check(path: str) -> int:
    from .config.parser import parse_file
    from .config.summary import summarize

    try:
        config, diagnostics = parse_file(path)
    except OSError as exc:
        print(f"stratum1: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    errors = [d for d in diagnostics if d.severity == "error"]
    for d in diagnostics:
        print(d, file=sys.stderr)
    if errors:
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(summarize(config))
    return 0


def cmd_drivers_list(conffile: str | None, as_json: bool, host: str | None = None) -> int:
    from .driverslist import main as drivers_main

    return drivers_main(conffile, as_json, host=host)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"stratum1 {__version__}")
        return 0
    if args.command == "query":
        from .query import main as query_main

        return query_main(args.server, args.count, args.timeout)
    if args.command in ("status", "peers"):
        from .status import main_peers, main_status

        return (main_status if args.command == "status" else main_peers)(args)
    if args.command == "run":
        from .daemon import run_from_args

        return run_from_args(args)
    if args.command == "config" and args.config_command == "check":
        return cmd_config_check(args.file)
    if args.command == "drivers" and args.drivers_command == "list":
        return cmd_drivers_list(args.conffile, args.json, args.host)
    parser.print_help(sys.stderr)
    return 2
