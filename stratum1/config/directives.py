"""Handlers of the non-association directives: access control, system options, files,
statistics, keys, interfaces and the small ones."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

from .builder import Builder, Opt, read_options, suggest
from .lexer import Statement
from .model import SYSTEM_FLAGS, InterfaceRule, RestrictEntry, SetVar
from .retired import MODE7_MESSAGE
from .values import BadValue, parse_address, parse_float, parse_int, parse_mask, prefix_to_mask

Handler = Callable[[Builder, Statement], None]

RESTRICT_FLAGS = frozenset({
    "ignore", "kod", "limited", "lowpriotrap", "mssntp", "noepeer", "nomodify", "nomrulist",
    "nopeer", "noquery", "noserve", "notrap", "notrust", "ntpport", "version", "flake",
})


def _no_args(b: Builder, stmt: Statement, n: int, usage: str) -> bool:
    if len(stmt.args) != n:
        b.error(stmt, f"expects {usage}")
        return False
    return True


# --- access control ------------------------------------------------------------------------

def handle_restrict(b: Builder, stmt: Statement) -> None:
    """restrict [-4|-6] default|source|address [mask m] [flags...]"""
    args = list(stmt.args)
    family = None
    if args and args[0].keyword in ("-4", "-6"):
        family = socket.AF_INET if args.pop(0).keyword == "-4" else socket.AF_INET6
    if not args:
        b.error(stmt, "needs default, source or an address")
        return
    target = args.pop(0)
    address: str | None = None
    mask: str | None = None
    source = False
    if target.keyword == "default":
        pass
    elif target.keyword == "source":
        source = True
    else:
        text, _, prefix = target.text.partition("/")
        try:
            addr = parse_address(text)
        except BadValue as exc:
            b.error(stmt, str(exc))
            return
        if addr.kind == "refclock":
            b.error(stmt, "restrict does not apply to refclock addresses")
            return
        if family is not None and addr.family is not None and family != addr.family:
            b.error(stmt, f"{addr.text} is not an {'IPv4' if family == socket.AF_INET else 'IPv6'}"
                    " address")
            return
        family = family if family is not None else addr.family
        address = addr.text
        if prefix:
            if addr.family is None:
                b.error(stmt, f"{target.text}: a prefix length needs an address, not a host name")
                return
            try:
                width = 32 if addr.family == socket.AF_INET else 128
                mask = prefix_to_mask(parse_int(prefix, 0, width, "prefix length"), addr.family)
            except BadValue as exc:
                b.error(stmt, str(exc))
                return
    flags: set[str] = set()
    ippeerlimit = None
    i = 0
    while i < len(args):
        word = args[i].keyword
        i += 1
        if word == "mask":
            if i >= len(args):
                b.error(stmt, "mask needs a value")
                break
            value = args[i].text
            i += 1
            if address is None:
                b.error(stmt, "mask applies only to an address, not to default or source")
                continue
            if mask is not None:
                b.error(stmt, "mask given twice (or with a /prefix)")
                continue
            if family is None:
                b.error(stmt, "mask needs an IP address, not a host name")
                continue
            try:
                mask = parse_mask(value, family)
            except BadValue as exc:
                b.error(stmt, str(exc))
        elif word == "ippeerlimit":
            if i >= len(args):
                b.error(stmt, "ippeerlimit needs a value")
                break
            try:
                ippeerlimit = parse_int(args[i].text, -1, 100)
            except BadValue as exc:
                b.error(stmt, f"ippeerlimit: {exc}")
            i += 1
        elif word in RESTRICT_FLAGS:
            flags.add(word)
        else:
            b.error(stmt, f"unknown flag {args[i - 1].text!r}"
                    f"{suggest(word, sorted(RESTRICT_FLAGS | {'mask'}))}")
    b.restrict.append(RestrictEntry(address, mask, family, source, frozenset(flags),
                                    stmt.location, ippeerlimit))


def _section(name: str, spec: dict[str, Opt], at_least_one: bool = True) -> Handler:
    def handler(b: Builder, stmt: Statement) -> None:
        if at_least_one and not stmt.args:
            b.error(stmt, f"needs at least one of {', '.join(sorted(spec))}")
            return
        opts = read_options(b, stmt, stmt.args, spec)
        b.section(name).update(opts)
        b.scalar_locations[name] = stmt.location
        for key in opts:
            b.scalar_locations[f"{name}.{key}"] = stmt.location

    handler.__doc__ = f"{name} {' '.join(f'[{k} n]' for k in spec)}"
    return handler


def _i(lo: int, hi: int) -> Opt:
    return Opt(convert=lambda s: parse_int(s, lo, hi))


def _f(lo: float, hi: float) -> Opt:
    return Opt(convert=lambda s: parse_float(s, lo, hi))


def _basedate(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise BadValue(f"expects a date YYYY-MM-DD, not {text!r}")
    import datetime

    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a valid date") from None
    return text


DISCARD = {"average": _i(0, 16), "minimum": _i(0, 600), "monitor": _i(0, 1_000_000)}
TOS = {
    "ceiling": _i(1, 16), "cohort": Opt(convert=lambda s: parse_int(s, 0, 1) == 1),
    "floor": _i(0, 15), "orphan": _i(1, 16), "orphanwait": _f(0, 86400),
    "mindist": _f(0.0, 10.0), "maxdist": _f(0.001, 16.0), "minclock": _i(1, 100),
    "minsane": _i(0, 100), "maxclock": _i(1, 100), "beacon": _i(1, 1_000_000),
    "basedate": Opt(convert=_basedate),
}
TINKER = {
    "step": _f(0, 86400), "stepout": _f(0, 86400), "panic": _f(0, 1e9), "allan": _f(0, 32),
    "dispersion": _f(0, 1000), "freq": _f(-500, 500), "huffpuff": _f(0, 1e6),
    "stepback": _f(0, 86400), "stepfwd": _f(0, 86400), "tick": _f(0, 1),
}
MRU = {k: _i(0, 1 << 31) for k in ("maxdepth", "maxmem", "mindepth", "maxage", "minage",
                                   "initalloc", "initmem", "incalloc", "incmem")}
RLIMIT = {k: _i(0, 1 << 31) for k in ("memlock", "stacksize", "filenum")}


def handle_tinker(b: Builder, stmt: Statement) -> None:
    _section("tinker", TINKER)(b, stmt)
    b.scalar_locations["tinker"] = stmt.location
    hp = b.section("tinker").get("huffpuff")
    if hp is not None and 0 < hp < 900:
        b.error(stmt, f"huffpuff {hp:g} is below the minimum span of 900 s")


# --- files -----------------------------------------------------------------------------------

def _file(field: str) -> Handler:
    def handler(b: Builder, stmt: Statement) -> None:
        if not _no_args(b, stmt, 1, "one file name"):
            return
        path = stmt.args[0].text
        if not path:
            b.error(stmt, "empty file name")
            return
        if field in b.scalar_locations:
            b.warning(stmt, f"set again (first at {b.scalar_locations[field]}); the last one "
                      "is used")
        b.scalars[field] = path
        b.scalar_locations[field] = stmt.location

    return handler


_LOGCONFIG_RE = re.compile(r"[=+-]?(all|clock|peer|sys|sync)?(all|info|events|statistics|status)\Z")


def handle_logconfig(b: Builder, stmt: Statement) -> None:
    """logconfig [+|-|=]CLASSTYPE ... (classes clock peer sys sync; types info events ...)."""
    if not stmt.args:
        b.error(stmt, "needs at least one item such as =syncall or +clockinfo")
    for tok in stmt.args:
        if _LOGCONFIG_RE.match(tok.keyword):
            b.logconfig.append(tok.keyword)
        else:
            b.error(stmt, f"bad item {tok.text!r} (expects [+-=]class type, e.g. =syncall, "
                    "+clockinfo)")


# --- statistics ------------------------------------------------------------------------------

STATS = frozenset({"loopstats", "peerstats", "clockstats", "rawstats", "sysstats",
                   "protostats", "cryptostats", "timingstats", "usestats"})
FILEGEN_TYPES = frozenset({"none", "pid", "day", "week", "month", "year", "age"})


def handle_statistics(b: Builder, stmt: Statement) -> None:
    if not stmt.args:
        b.error(stmt, f"needs one or more of {', '.join(sorted(STATS))}")
    for tok in stmt.args:
        if tok.keyword in STATS:
            b.statistics.add(tok.keyword)
        else:
            b.error(stmt, f"unknown statistics file {tok.text!r}{suggest(tok.keyword, sorted(STATS))}")


def handle_filegen(b: Builder, stmt: Statement) -> None:
    """filegen name [file f] [type t] [link|nolink] [enable|disable]"""
    if not stmt.args:
        b.error(stmt, "needs a statistics name")
        return
    name = stmt.args[0].keyword
    if name not in STATS:
        b.error(stmt, f"unknown statistics file {stmt.args[0].text!r}{suggest(name, sorted(STATS))}")
        return

    def _type(text: str) -> str:
        if text.lower() not in FILEGEN_TYPES:
            raise BadValue(f"expects one of {', '.join(sorted(FILEGEN_TYPES))}, not {text!r}")
        return text.lower()

    spec = {"file": Opt(convert=lambda s: s), "type": Opt(convert=_type), "link": Opt(),
            "nolink": Opt(), "enable": Opt(), "disable": Opt()}
    opts = read_options(b, stmt, stmt.args[1:], spec)
    entry = b.filegens.setdefault(name, {})
    for key in ("file", "type"):
        if key in opts:
            entry[key] = opts[key]
    if "link" in opts or "nolink" in opts:
        entry["link"] = "nolink" not in opts
    if "enable" in opts and "disable" in opts:
        b.error(stmt, "both enable and disable")
    elif "enable" in opts or "disable" in opts:
        entry["enabled"] = "enable" in opts


# --- system flags, interfaces ----------------------------------------------------------------

def handle_enable(b: Builder, stmt: Statement) -> None:
    """enable|disable auth bclient calibrate kernel monitor ntp stats pps ..."""
    on = stmt.directive == "enable"
    if not stmt.args:
        b.error(stmt, f"needs one or more of {', '.join(sorted(SYSTEM_FLAGS))}")
    for tok in stmt.args:
        flag = tok.keyword
        if flag == "mode7":
            if on:
                b.warning(stmt, "mode7: " + MODE7_MESSAGE)
        elif flag in SYSTEM_FLAGS:
            b.enable_changes.append((flag, on))
        else:
            b.error(stmt, f"unknown flag {tok.text!r}{suggest(flag, sorted(SYSTEM_FLAGS))}")


_IFACE_NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\Z")


def handle_interface(b: Builder, stmt: Statement) -> None:
    """interface|nic listen|ignore|drop all|ipv4|ipv6|wildcard|NAME|ADDRESS[/prefixlen]"""
    if not _no_args(b, stmt, 2, "listen|ignore|drop followed by all, ipv4, ipv6, wildcard, "
                    "an interface name or an address"):
        return
    action, what = stmt.args[0].keyword, stmt.args[1].text
    if action not in ("listen", "ignore", "drop"):
        b.error(stmt, f"unknown action {stmt.args[0].text!r} (expects listen, ignore or drop)")
        return
    if what.lower() in ("all", "ipv4", "ipv6", "wildcard"):
        b.interfaces.append(InterfaceRule(action, what.lower(), None, None, stmt.location))
        return
    text, slash, prefix = what.partition("/")
    try:
        addr = parse_address(text, allow_host=False)
    except BadValue:
        addr = None
    if addr is not None and addr.kind in ("ipv4", "ipv6"):
        prefixlen = None
        if slash:
            try:
                prefixlen = parse_int(prefix, 0, 32 if addr.kind == "ipv4" else 128,
                                      "prefix length")
            except BadValue as exc:
                b.error(stmt, str(exc))
                return
        b.interfaces.append(InterfaceRule(action, "address", addr.text, prefixlen, stmt.location))
    elif not slash and _IFACE_NAME_RE.match(what):
        b.interfaces.append(InterfaceRule(action, "name", what, None, stmt.location))
    else:
        b.error(stmt, f"{what!r} is not an interface name or address")


# --- keys ------------------------------------------------------------------------------------

def _key(text: str) -> int:
    return parse_int(text, 1, 65535, "key")


def handle_trustedkey(b: Builder, stmt: Statement) -> None:
    """trustedkey k ... with ranges written (a ... b) as in ntpd, or a-b."""
    joined = " ".join(t.text for t in stmt.args)
    words = joined.replace("(", " ( ").replace(")", " ) ").replace("...", " ... ").split()
    if not words:
        b.error(stmt, "needs one or more key numbers")
        return
    i = 0
    while i < len(words):
        w = words[i]
        try:
            if w == "(":
                close = words.index(")", i) if ")" in words[i:] else -1
                if close < 0 or close - i != 4 or words[i + 2] != "...":
                    b.error(stmt, "a key range is written (first ... last)")
                    return
                lo, hi = _key(words[i + 1]), _key(words[i + 3])
                i = close + 1
            elif re.fullmatch(r"\d+-\d+", w):
                lo, hi = (_key(x) for x in w.split("-"))
                i += 1
            else:
                lo = hi = _key(w)
                i += 1
        except BadValue as exc:
            b.error(stmt, str(exc))
            i += 1
            continue
        if lo > hi:
            b.error(stmt, f"key range {lo} ... {hi} is empty")
            continue
        b.trustedkeys.update(range(lo, hi + 1))


def _keynum(field: str) -> Handler:
    def handler(b: Builder, stmt: Statement) -> None:
        if not _no_args(b, stmt, 1, "one key number"):
            return
        try:
            b.scalars[field] = _key(stmt.args[0].text)
            b.scalar_locations[field] = stmt.location
        except BadValue as exc:
            b.error(stmt, str(exc))
            return
        if field == "requestkey":
            b.warning(stmt, "ignored: " + MODE7_MESSAGE)

    return handler


# --- the rest --------------------------------------------------------------------------------

_SETVAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def handle_setvar(b: Builder, stmt: Statement) -> None:
    """setvar name = value [default]"""
    toks = list(stmt.args)
    default = bool(toks) and toks[-1].keyword == "default"
    if default:
        toks.pop()
    text = " ".join(f'"{t.text}"' if t.quoted else t.text for t in toks)
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not name:
        b.error(stmt, "expects name = value [default]")
        return
    if not _SETVAR_NAME_RE.match(name):
        b.error(stmt, f"{name!r} is not a valid variable name")
        return
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if '"' in value:
        b.error(stmt, "a value may not contain '\"' (ntpq could not read it back)")
        return
    b.setvars.append(SetVar(name, value, default))


def handle_ttl(b: Builder, stmt: Statement) -> None:
    """ttl hop ... : up to 8 TTL values for manycast/broadcast."""
    if not 1 <= len(stmt.args) <= 8:
        b.error(stmt, "expects 1 to 8 TTL values")
        return
    values: list[int] = []
    for tok in stmt.args:
        try:
            values.append(parse_int(tok.text, 0, 255, "ttl"))
        except BadValue as exc:
            b.error(stmt, str(exc))
    b.ttl[:] = values


def handle_broadcastclient(b: Builder, stmt: Statement) -> None:
    """broadcastclient [novolley]"""
    extra = [t for t in stmt.args if t.keyword != "novolley"]
    if extra:
        b.error(stmt, f"unknown option {extra[0].text!r} (expects novolley)")
    b.scalars["broadcastclient"] = True
    if len(extra) < len(stmt.args):
        b.scalars["novolley"] = True


def _addresses(field: str, default: tuple[str, ...]) -> Handler:
    def handler(b: Builder, stmt: Statement) -> None:
        if not stmt.args and not default:
            b.error(stmt, "needs one or more addresses")
        target: list[str] = getattr(b, field)
        for tok in stmt.args:
            try:
                addr = parse_address(tok.text, allow_host=False)
            except BadValue as exc:
                b.error(stmt, str(exc))
                continue
            ip = addr.ip
            if ip is None:
                b.error(stmt, f"{tok.text!r} is not an IP address")
            elif field == "multicastclient" and not ip.is_multicast:
                b.error(stmt, f"{addr.text} is not a multicast address")
            else:
                target.append(addr.text)
        if not stmt.args:
            target.extend(default)

    return handler


def _number(field: str, convert: Callable[[str], Any]) -> Handler:
    def handler(b: Builder, stmt: Statement) -> None:
        if not _no_args(b, stmt, 1, "one value"):
            return
        try:
            b.scalars[field] = convert(stmt.args[0].text)
        except BadValue as exc:
            b.error(stmt, str(exc))

    return handler


def handle_nts(b: Builder, stmt: Statement) -> None:
    """ntpsec: nts enable|disable|cert f|key f|ca f|cookie f|mintls v|maxtls v|aead name"""
    spec = {"enable": Opt(), "disable": Opt(),
            **{k: Opt(convert=lambda s: s) for k in ("cert", "key", "ca", "cookie", "mintls",
                                                     "maxtls", "aead")}}
    if not stmt.args:
        b.error(stmt, "needs enable, disable or a setting")
        return
    opts = read_options(b, stmt, stmt.args, spec, "setting")
    section = b.section("nts")
    if "enable" in opts or "disable" in opts:
        section["enable"] = "enable" in opts
    for key, value in opts.items():
        if key not in ("enable", "disable"):
            section[key] = value


HANDLERS: dict[str, Handler] = {
    "restrict": handle_restrict,
    "discard": _section("discard", DISCARD),
    "tos": _section("tos", TOS),
    "tinker": handle_tinker,
    "mru": _section("mru", MRU),
    "rlimit": _section("rlimit", RLIMIT),
    **{k: _file(k) for k in ("driftfile", "leapfile", "logfile", "pidfile", "statsdir", "keys",
                             "keysdir")},
    "logconfig": handle_logconfig,
    "statistics": handle_statistics,
    "filegen": handle_filegen,
    "enable": handle_enable,
    "disable": handle_enable,
    "interface": handle_interface,
    "nic": handle_interface,
    "trustedkey": handle_trustedkey,
    "controlkey": _keynum("controlkey"),
    "requestkey": _keynum("requestkey"),
    "setvar": handle_setvar,
    "ttl": handle_ttl,
    "broadcastclient": handle_broadcastclient,
    "multicastclient": _addresses("multicastclient", ("224.0.1.1",)),
    "manycastserver": _addresses("manycastserver", ()),
    "broadcastdelay": _number("broadcastdelay", lambda s: parse_float(s, 0.0, 1.0)),
    "dscp": _number("dscp", lambda s: parse_int(s, 0, 63)),
    "leapsmearinterval": _number("leapsmearinterval", lambda s: parse_int(s, 0, 86400 * 7)),
    "nonvolatile": _number("nonvolatile", lambda s: parse_float(s, 0.0, 500.0)),
    "nts": handle_nts,
}
