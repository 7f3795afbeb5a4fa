"""Association directives: server, peer, pool, broadcast, manycastclient, refclock and fudge."""

from __future__ import annotations

import socket
from typing import Any

from .builder import Builder, Opt, RefclockDecl, read_options
from .lexer import Statement
from .model import AssociationConfig
from .retired import NAME_TO_TYPE, RETIRED_OPTIONS
from .values import (
    BadValue,
    parse_address,
    parse_bool01,
    parse_float,
    parse_int,
    parse_refclock_address,
)


def _ranged(lo: int, hi: int) -> Opt:
    return Opt(convert=lambda s: parse_int(s, lo, hi))


def _refid(text: str) -> str:
    if not text or not all(0x20 < ord(c) < 0x7F for c in text):
        raise BadValue(f"expects 1 to 4 printable ASCII characters, not {text!r}")
    return text


_BAUDS = frozenset({300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
                    460800, 921600})


def _baud(text: str) -> int:
    value = parse_int(text, 1, 10_000_000)
    if value not in _BAUDS:
        raise BadValue(f"{value} is not a standard serial speed ({', '.join(map(str, sorted(_BAUDS)))})")
    return value


def _path(text: str) -> str:
    if not text:
        raise BadValue("expects a file name")
    return text


_RETIRED = {k: Opt(severity=sev, message=msg, takes_value=(k == "ident"))
            for k, (sev, msg) in RETIRED_OPTIONS.items()}

#: Options of network associations (server, peer, pool, broadcast, manycastclient).
NETWORK_OPTIONS: dict[str, Opt] = {
    **{k: Opt() for k in ("iburst", "burst", "prefer", "noselect", "true", "xleave", "preempt",
                          "nts")},
    "minpoll": _ranged(3, 17),
    "maxpoll": _ranged(3, 17),
    "version": _ranged(1, 4),
    "key": _ranged(1, 65535),
    "ttl": _ranged(0, 255),
    "mode": _ranged(0, 0xFFFFFFFF),
    **_RETIRED,
}

_POLL = _ranged(0, 17)
_FLAG = Opt(optional_value=lambda s: parse_bool01(s))
#: Fudge fields (``fudge`` line; also valid on ntpsec ``refclock`` lines).
FUDGE_OPTIONS: dict[str, Opt] = {
    "time1": Opt(convert=lambda s: parse_float(s, -86400.0, 86400.0)),
    "time2": Opt(convert=lambda s: parse_float(s, -86400.0, 86400.0)),
    "stratum": _ranged(0, 15),
    "refid": Opt(convert=_refid),
    "flag1": _FLAG,
    "flag2": _FLAG,
    "flag3": _FLAG,
    "flag4": _FLAG,
    "minjitter": Opt(convert=lambda s: parse_float(s, 0.0, 1.0)),
}

#: Options on a ``server 127.127.t.u`` line.
_SELECT = {k: Opt() for k in ("prefer", "noselect", "true", "iburst")}
_NOT_FOR_REFCLOCK = "does not apply to a reference clock; ignored"
REFCLOCK_SERVER_OPTIONS: dict[str, Opt] = {
    **_SELECT,
    "minpoll": _POLL,
    "maxpoll": _POLL,
    "mode": _ranged(0, 0xFFFFFFFF),
    **{k: Opt(severity="warning", message=_NOT_FOR_REFCLOCK, takes_value=k in ("key", "version"))
       for k in ("burst", "xleave", "preempt", "key", "version")},
    "ttl": Opt(severity="warning", takes_value=True,
               message="does not apply to a reference clock (use mode); ignored"),
    **_RETIRED,
}

#: Options of the ntpsec ``refclock NAME`` line.
REFCLOCK_OPTIONS: dict[str, Opt] = {
    **_SELECT,
    "unit": _ranged(0, 255),
    "minpoll": _POLL,
    "maxpoll": _POLL,
    "mode": _ranged(0, 0xFFFFFFFF),
    "subtype": _ranged(0, 255),
    "path": Opt(convert=_path),
    "ppspath": Opt(convert=_path),
    "baud": Opt(convert=_baud),
    **FUDGE_OPTIONS,
}

_KINDS = ("server", "peer", "pool", "broadcast", "manycastclient")


def _family_qualifier(b: Builder, stmt: Statement) -> tuple[int | None, list[Any]]:
    args = list(stmt.args)
    family = None
    if args and args[0].keyword in ("-4", "-6"):
        family = socket.AF_INET if args.pop(0).keyword == "-4" else socket.AF_INET6
    return family, args


def _check_polls(b: Builder, stmt: Statement, opts: dict[str, Any], dmin: int | None,
                 dmax: int | None) -> tuple[int | None, int | None]:
    """Apply ntpd's rule: a lone minpoll above the default maxpoll raises maxpoll (and a lone
    maxpoll below the default minpoll lowers minpoll); both given and crossed is an error."""
    lo, hi = opts.get("minpoll"), opts.get("maxpoll")
    if lo is not None and hi is not None:
        if lo > hi:
            b.error(stmt, f"minpoll {lo} is greater than maxpoll {hi}")
        return lo, hi
    if lo is not None and dmax is not None:
        return lo, max(lo, dmax)
    if hi is not None and dmin is not None:
        return min(hi, dmin), hi
    return lo if lo is not None else dmin, hi if hi is not None else dmax


def handle_association(b: Builder, stmt: Statement) -> None:
    """server / peer / pool / broadcast / manycastclient [-4|-6] address [options]."""
    kind = stmt.directive
    family, args = _family_qualifier(b, stmt)
    if not args:
        b.error(stmt, "needs an address or host name")
        return
    host_tok, rest = args[0], args[1:]
    if host_tok.keyword in ("-4", "-6"):
        b.error(stmt, f"{host_tok.text} must come right after {kind}, once")
        return
    try:
        addr = parse_address(host_tok.text, allow_host=kind in ("server", "peer", "pool"))
    except BadValue as exc:
        b.error(stmt, str(exc))
        return
    if addr.kind == "refclock":
        if kind != "server":
            b.error(stmt, f"reference clock {addr.text} can only be configured with server or refclock")
            return
        _refclock_server(b, stmt, addr.refclock or (0, 0), rest, family)
        return
    if family is not None and addr.family is not None and family != addr.family:
        b.error(stmt, f"{addr.text} is not an {'IPv4' if family == socket.AF_INET else 'IPv6'} address")
        return
    if kind == "manycastclient" and addr.ip is not None and not addr.ip.is_multicast:
        b.error(stmt, f"{addr.text} is not a multicast address")
        return
    opts = read_options(b, stmt, rest, NETWORK_OPTIONS)
    minpoll, maxpoll = _check_polls(b, stmt, opts, 6, 10)
    if kind == "pool" and opts.get("mode") is not None:
        b.warning(stmt, "mode has no meaning for a pool; ignored")
        opts.pop("mode")
    assoc = AssociationConfig(
        kind=kind,
        host=addr.text,
        family=family if family is not None else addr.family,
        iburst=bool(opts.get("iburst")),
        burst=bool(opts.get("burst")),
        prefer=bool(opts.get("prefer")),
        noselect=bool(opts.get("noselect")),
        true=bool(opts.get("true")),
        xleave=bool(opts.get("xleave")),
        preempt=bool(opts.get("preempt")),
        nts=bool(opts.get("nts")),
        minpoll=minpoll if minpoll is not None else 6,
        maxpoll=maxpoll if maxpoll is not None else 10,
        version=opts.get("version", 4),
        key=opts.get("key"),
        ttl=opts.get("ttl"),
        mode=opts.get("mode"),
        location=stmt.location,
    )
    for other in b.associations:
        if other.kind == assoc.kind and other.host.lower() == assoc.host.lower():
            b.warning(stmt, f"duplicate {kind} {assoc.host} (first at {other.location}); both kept")
            break
    b.associations.append(assoc)


def _refclock_server(b: Builder, stmt: Statement, tu: tuple[int, int], rest: list[Any],
                     family: int | None) -> None:
    if family == socket.AF_INET6:
        b.error(stmt, "-6 does not apply to a reference clock address")
    opts = read_options(b, stmt, rest, REFCLOCK_SERVER_OPTIONS)
    _check_polls(b, stmt, opts, None, None)
    b.refclocks.append(RefclockDecl(tu[0], tu[1], opts, stmt.location, stmt.directive))


def handle_refclock(b: Builder, stmt: Statement) -> None:
    """ntpsec: refclock NAME [unit U] [options]."""
    if not stmt.args:
        b.error(stmt, "needs a driver name (nmea, pps, shm, gpsd, local, ...)")
        return
    name_tok = stmt.args[0]
    opts = read_options(b, stmt, stmt.args[1:], REFCLOCK_OPTIONS)
    _check_polls(b, stmt, opts, None, None)
    unit = opts.pop("unit", 0)
    type_ = _type_for_name(name_tok.text)
    if type_ is None:
        b.error(stmt, f"unknown refclock driver {name_tok.text!r}")
        return
    b.refclocks.append(RefclockDecl(type_, unit, opts, stmt.location, stmt.directive))


def _type_for_name(name: str) -> int | None:
    from ..refclock import registry

    if name.isdigit():
        return int(name)
    cls = registry.lookup(name)
    if cls is not None:
        return cls.type
    return NAME_TO_TYPE.get(name.lower())


def handle_fudge(b: Builder, stmt: Statement) -> None:
    """fudge 127.127.t.u [time1 s] [time2 s] [stratum n] [refid id] [flag1..flag4 0|1]."""
    if not stmt.args:
        b.error(stmt, "needs a refclock address 127.127.t.u")
        return
    try:
        tu = parse_refclock_address(stmt.args[0].text)
    except BadValue as exc:
        b.error(stmt, str(exc))
        return
    if tu is None:
        b.error(stmt, f"{stmt.args[0].text} is not a refclock address 127.127.t.u")
        return
    opts = read_options(b, stmt, stmt.args[1:], FUDGE_OPTIONS)
    b.refclocks.append(RefclockDecl(tu[0], tu[1], opts, stmt.location, stmt.directive,
                                    is_fudge=True))


HANDLERS = {
    **{k: handle_association for k in _KINDS},
    "refclock": handle_refclock,
    "fudge": handle_fudge,
}
