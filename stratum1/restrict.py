"""The ``restrict`` table: address/mask entries whose most specific match gives a packet's flags.

Flags carry ntpd's meanings and ntpd's bit values (what ``ntpq -c mrulist`` shows as ``rstr``);
``restrict source`` entries follow the addresses of configured servers and pool members.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import random
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntFlag, StrEnum

from .config.model import Config, RestrictEntry
from .ratelimit import MruEntry, MruLimits, RateLimiter

log = logging.getLogger(__name__)

NTP_PORT = 123


class Flag(IntFlag):
    """ntpd's RES_* restriction bits (``ntp.h``); the values appear in mode-6 ``rs`` fields."""

    IGNORE = 0x0001  # ignore: drop every packet, ntpq included
    NOSERVE = 0x0002  # noserve: no time service (ntpq still answered)
    NOTRUST = 0x0004  # notrust: serve only cryptographically authenticated packets
    VERSION = 0x0008  # version: only the current NTP version (4)
    NOPEER = 0x0010  # nopeer: no new association from an unauthenticated packet
    LIMITED = 0x0020  # limited: enforce the discard rate limits
    NOQUERY = 0x0040  # noquery: no mode-6 (ntpq) queries
    NOMODIFY = 0x0080  # nomodify: no mode-6 writes (run-time configuration)
    NOTRAP = 0x0100  # notrap: no mode-6 trap service
    LOWPRIOTRAP = 0x0200  # lowpriotrap: traps set by these hosts are low priority
    KOD = 0x0400  # kod: answer a rate violation with a RATE kiss-o'-death
    MSSNTP = 0x0800  # mssntp: MS-SNTP signing (recorded; not provided)
    FLAKE = 0x1000  # flake: drop 10% of time packets (testing)
    NOMRULIST = 0x2000  # nomrulist: no mode-6 mrulist
    NOEPEER = 0x4000  # noepeer: no ephemeral symmetric-passive associations


#: ``restrict`` keywords to flags. ``ntpport`` is a match condition, not a flag.
FLAG_NAMES: dict[str, Flag] = {
    "ignore": Flag.IGNORE,
    "noserve": Flag.NOSERVE,
    "notrust": Flag.NOTRUST,
    "version": Flag.VERSION,
    "nopeer": Flag.NOPEER,
    "limited": Flag.LIMITED,
    "noquery": Flag.NOQUERY,
    "nomodify": Flag.NOMODIFY,
    "notrap": Flag.NOTRAP,
    "lowpriotrap": Flag.LOWPRIOTRAP,
    "kod": Flag.KOD,
    "mssntp": Flag.MSSNTP,
    "flake": Flag.FLAKE,
    "nomrulist": Flag.NOMRULIST,
    "noepeer": Flag.NOEPEER,
}
MATCH_NTPPORT = "ntpport"

#: mode-6 opcodes that change server state (nomodify) or set traps (notrap), per RFC 1305 app. B.
CONTROL_WRITE_OPCODES = frozenset({3, 5, 8, 9})  # WRITEVAR, WRITECLOCK, CONFIGURE, SAVECONFIG
CONTROL_TRAP_OPCODES = frozenset({6, 31})  # SETTRAP, UNSETTRAP
CONTROL_MRULIST_OPCODES = frozenset({10, 12})  # READ_MRU, REQ_NONCE (mrulist's first step)

Resolver = Callable[[str, int | None], list[str]]


def flags_from_names(names: Iterable[str]) -> int:
    """The flag bits of ``restrict`` keywords (``ntpport`` and unknown words are ignored here:
    the config parser has already rejected unknown ones)."""
    bits = 0
    for name in names:
        bits |= int(FLAG_NAMES.get(name, 0))
    return bits


def flag_names(bits: int) -> list[str]:
    """The ``restrict`` keywords of a flag set, in ntpd's bit order."""
    return [name for name, flag in FLAG_NAMES.items() if bits & flag]


def parse_host(host: str) -> tuple[int, int]:
    """(family, address as int) of a numeric address; an IPv4-mapped IPv6 address (what a
    dual-stack socket reports) counts as the IPv4 address it carries. ValueError otherwise."""
    if ":" in host:
        text = host.split("%", 1)[0]
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        except OSError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if value >> 32 == 0xFFFF:
            return socket.AF_INET, value & 0xFFFFFFFF
        return socket.AF_INET6, value
    try:
        return socket.AF_INET, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except OSError:
        raise ValueError(f"{host!r} is not a numeric address") from None


_WIDTH = {socket.AF_INET: 32, socket.AF_INET6: 128}
_GENERATIONS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled entry: ``family`` network ``network``/``prefixlen``."""

    family: int
    network: int
    prefixlen: int
    flags: int
    ntpport: bool = False
    source: bool = False  # added by ``restrict source`` for an association's address
    interface: bool = False  # a local address (ntpd ignores its own port-123 packets)
    ippeerlimit: int | None = None
    origin: str = ""  # file:line, for ``config check`` and logs

    @property
    def address(self) -> str:
        if self.family == socket.AF_INET:
            return str(ipaddress.IPv4Address(self.network))
        return str(ipaddress.IPv6Address(self.network))

    @property
    def mask(self) -> str:
        width = _WIDTH[self.family]
        bits = ((1 << width) - 1) ^ ((1 << (width - self.prefixlen)) - 1)
        if self.family == socket.AF_INET:
            return str(ipaddress.IPv4Address(bits))
        return str(ipaddress.IPv6Address(bits))


class RestrictTable:
    """The restriction list. ``lookup`` gives the flags of the most specific matching entry:
    the longest prefix, and at equal prefix an ``ntpport`` entry when the source port is 123.
    Each family has a default entry (no flags unless ``restrict default`` says otherwise).

    Lines naming the same address and mask add their flags together, as in ntpd.
    ``generation`` changes whenever the table does, so callers may cache lookups.
    """

    def __init__(self) -> None:
        self._rules: dict[tuple[int, int, int, bool], Rule] = {}
        self._source_flags: int | None = None
        self._source_peerlimit: int | None = None
        self._sources: dict[tuple[int, int], int] = {}  # (family, address) -> reference count
        self._levels: dict[int, list[tuple[int, int, dict[int, tuple[int, int]]]]] = {}
        self.generation = 0
        self.has_ntpport = False
        self.has_limited = False
        self.unresolved: list[str] = []
        self._compile()

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, entries: Iterable[RestrictEntry], resolve: Resolver | None = None
    ) -> RestrictTable:
        """Build from the config's ``restrict`` lines. Host names are resolved with ``resolve``
        (host, family) -> addresses; without a resolver (or when it finds nothing) the line is
        listed in ``unresolved`` and logged, and the rest of the table still applies."""
        table = cls()
        for entry in entries:
            table.add_entry(entry, resolve)
        return table

    def add_entry(self, entry: RestrictEntry, resolve: Resolver | None = None) -> None:
        """Add one config line."""
        origin = str(entry.location) if entry.location else ""
        bits = flags_from_names(entry.flags)
        ntpport = MATCH_NTPPORT in entry.flags
        if entry.source:
            self._source_flags = (self._source_flags or 0) | bits
            self._source_peerlimit = entry.ippeerlimit
            self._compile()
            return
        if entry.address is None:
            families = [entry.family] if entry.family else [socket.AF_INET, socket.AF_INET6]
            for family in families:
                self.add(family, 0, 0, bits, ntpport=ntpport, origin=origin,
                         ippeerlimit=entry.ippeerlimit)  # fmt: skip
            return
        addresses = [entry.address] if _is_numeric(entry.address) else None
        if addresses is None:
            found = resolve(entry.address, entry.family) if resolve else []
            if not found:
                self.unresolved.append(entry.address)
                log.warning("%s: restrict %s: host name not resolved; line not applied",
                            origin or "restrict", entry.address)  # fmt: skip
                return
            addresses = found
        for text in addresses:
            family, value = parse_host(text)
            if entry.mask is not None and (":" in entry.mask) != (family == socket.AF_INET6):
                continue  # a mask of the other family: not this address's entry
            prefixlen = _WIDTH[family] if entry.mask is None else _prefixlen(entry.mask)
            self.add(family, value, prefixlen, bits, ntpport=ntpport, origin=origin,
                     ippeerlimit=entry.ippeerlimit)  # fmt: skip

    def add(
        self, family: int, network: int, prefixlen: int, flags: int, *, ntpport: bool = False,
        origin: str = "", interface: bool = False, ippeerlimit: int | None = None,
    ) -> None:  # fmt: skip
        """Add (or OR flags into) the entry ``network/prefixlen``; host bits are masked off."""
        width = _WIDTH[family]
        if not 0 <= prefixlen <= width:
            raise ValueError(f"prefix length {prefixlen} out of range for the family")
        mask = ((1 << width) - 1) ^ ((1 << (width - prefixlen)) - 1)
        network &= mask
        key = (family, network, prefixlen, ntpport)
        flags = int(flags)
        old = self._rules.get(key)
        if old is not None:
            flags |= old.flags
            origin = origin or old.origin
            interface = interface or old.interface
        self._rules[key] = Rule(family, network, prefixlen, flags, ntpport, False, interface,
                                ippeerlimit, origin)  # fmt: skip
        self._compile()

    def add_local_address(self, host: str) -> None:
        """Ignore packets from one of our own addresses with source port 123, as ntpd does for
        every local interface (it keeps the server from answering itself)."""
        family, value = parse_host(host)
        self.add(family, value, _WIDTH[family], Flag.IGNORE, ntpport=True, interface=True,
                 origin="interface")  # fmt: skip

    @property
    def has_source(self) -> bool:
        """Whether a ``restrict source`` line exists."""
        return self._source_flags is not None

    def add_source(self, host: str) -> bool:
        """An association to ``host`` was mobilized (server, peer, pool member): apply the
        ``restrict source`` flags to that host. False (and no change) without such a line."""
        if self._source_flags is None:
            return False
        key = parse_host(host)
        self._sources[key] = self._sources.get(key, 0) + 1
        if self._sources[key] == 1:
            self._compile()
        return True

    def remove_source(self, host: str) -> None:
        """The association to ``host`` is gone: its ``restrict source`` entry goes too."""
        key = parse_host(host)
        count = self._sources.get(key, 0)
        if count <= 1:
            if self._sources.pop(key, None) is not None:
                self._compile()
        else:
            self._sources[key] = count - 1

    # -- lookup -------------------------------------------------------------------------------
    def lookup(self, host: str, port: int = 0) -> int:
        """The flags for packets from ``host`` (numeric) and source ``port``."""
        family, value = parse_host(host)
        return self.lookup_int(family, value, port)

    def lookup_int(self, family: int, value: int, port: int = 0) -> int:
        is_ntp = port == NTP_PORT
        for mask, _plen, nets in self._levels[family]:
            hit = nets.get(value & mask)
            if hit is None:
                continue
            plain, ntponly = hit
            if is_ntp and ntponly >= 0:
                return ntponly
            if plain >= 0:
                return plain
        return 0  # unreachable: every family has a /0 default

    def rules(self) -> list[Rule]:
        """Every entry, most specific first per family (``ntpq -c reslist`` order)."""
        out = list(self._rules.values())
        for family, value in self._sources:
            out.append(Rule(family, value, _WIDTH[family], self._source_flags or 0, False, True,
                            False, self._source_peerlimit, "restrict source"))  # fmt: skip
        out.sort(key=lambda r: (r.family, -r.prefixlen, -int(r.ntpport), r.network))
        return out

    def _compile(self) -> None:
        merged: dict[int, dict[int, dict[int, list[int]]]] = {
            socket.AF_INET: {}, socket.AF_INET6: {},
        }  # fmt: skip
        for family in (socket.AF_INET, socket.AF_INET6):
            merged[family].setdefault(0, {})[0] = [0, -1]  # the implicit default
        for (family, network, prefixlen, ntpport), rule in self._rules.items():
            slot = merged[family].setdefault(prefixlen, {}).setdefault(network, [-1, -1])
            index = 1 if ntpport else 0
            slot[index] = rule.flags if slot[index] < 0 else slot[index] | rule.flags
        for (family, value), _count in self._sources.items():
            width = _WIDTH[family]
            slot = merged[family].setdefault(width, {}).setdefault(value, [-1, -1])
            # A configured host line and ``restrict source`` for the same host combine (OR).
            slot[0] = (self._source_flags or 0) | max(slot[0], 0)
            if slot[1] >= 0:
                slot[1] |= self._source_flags or 0
        levels: dict[int, list[tuple[int, int, dict[int, tuple[int, int]]]]] = {}
        for family, by_len in merged.items():
            width = _WIDTH[family]
            levels[family] = [
                (((1 << width) - 1) ^ ((1 << (width - plen)) - 1), plen,
                 {net: (v[0], v[1]) for net, v in nets.items()})
                for plen, nets in sorted(by_len.items(), reverse=True)
            ]  # fmt: skip
        self._levels = levels
        self.has_ntpport = any(key[3] for key in self._rules)
        self.has_limited = bool(
            any(r.flags & Flag.LIMITED for r in self._rules.values())
            or (self._source_flags or 0) & Flag.LIMITED
        )
        # Unique across tables, so an MRU entry cached under an old table never looks current.
        self.generation = next(_GENERATIONS)


def _is_numeric(text: str) -> bool:
    try:
        parse_host(text)
    except ValueError:
        return False
    return True


def _prefixlen(mask: str) -> int:
    value = int(ipaddress.ip_address(mask))
    return bin(value).count("1")


def system_resolver(host: str, family: int | None) -> list[str]:
    """Resolve a ``restrict`` host name with the system resolver (blocking: start-up only)."""
    try:
        infos = socket.getaddrinfo(host, None, family or socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("restrict %s: %s", host, exc)
        return []
    seen: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in seen:
            seen.append(addr)
    return seen


class Decision(StrEnum):
    """What to do with one datagram; the values are ``stratum1.server``'s SERVE/DROP/KOD."""

    SERVE = "serve"  # go on: answer the time request, or hand mode 6 to the control handler
    DROP = "drop"  # say nothing
    KOD = "kod"  # answer with a RATE kiss-o'-death instead of the time


@dataclass(slots=True)
class AccessStats:
    """Why packets were refused (ntpd counts them all as ``sys_restricted`` and
    ``sys_limitrejected``; here each reason has its own counter)."""

    checked: int = 0
    ignored: int = 0
    noquery: int = 0
    noserve: int = 0
    version: int = 0
    notrust: int = 0
    flake: int = 0
    limited: int = 0  # over the rate limits (dropped or KoD)
    kod: int = 0  # of which answered with a KoD
    bad_address: int = 0


_MODE_SERVER = 4
_MODE_BROADCAST = 5
_MODE_CONTROL = 6
_MODE_PRIVATE = 7
_NTP_VERSION = 4
# Plain ints for the hot path: IntFlag arithmetic costs a microsecond per operation.
_IGNORE = int(Flag.IGNORE)
_NOSERVE = int(Flag.NOSERVE)
_NOTRUST = int(Flag.NOTRUST)
_VERSION = int(Flag.VERSION)
_LIMITED = int(Flag.LIMITED)
_NOQUERY = int(Flag.NOQUERY)
_KOD = int(Flag.KOD)
_FLAKE = int(Flag.FLAKE)
_DOUSE = ~(_LIMITED | _KOD) & 0xFFFF
_MODE_CLIENT = 3
#: Refused before the MRU list is touched, whatever the packet: a whole run is dropped at once.
_REFUSED = _IGNORE | _NOSERVE
#: Decided per request (a random draw, the version, a MAC): check_clients asks ``check``.
_PER_REQUEST = _FLAKE | _VERSION | _NOTRUST
_FLAGS_CACHE_MAX = 4096


class AccessControl:
    """``restrict`` + rate limiting for the serving hot path, in ntpd's order: ignore, mode 6
    (noquery), noserve, flake, version, notrust (a MAC must be present), then the MRU list and
    ``limited``/``kod``.

    ``check`` is pure apart from the MRU list it updates; the address's table lookup is cached
    in its MRU entry. ``last_flags`` holds the flags of the latest check, for the caller's later
    steps (``notrust`` once the MAC is known, ``nomodify``/``notrap`` for mode 6, ``nopeer``).
    """

    def __init__(self, table: RestrictTable | None = None, limiter: RateLimiter | None = None,
                 *, rng: Callable[[], float] = random.random) -> None:  # fmt: skip
        self.table = table if table is not None else RestrictTable()
        self.limiter = limiter
        self._rng = rng
        self.last_flags = 0
        self.stats = AccessStats()
        # check_clients: table flags by (host, from port 123) for the table generation below.
        self._flags_cache: dict[tuple[str, bool], int] = {}
        self._cache_generation = -1

    @classmethod
    def from_config(cls, config: Config, resolve: Resolver | None = None, *,
                    rng: Callable[[], float] = random.random) -> AccessControl:  # fmt: skip
        """The table from ``restrict`` lines; the MRU list from ``discard``/``mru`` when
        monitoring is on: ``enable monitor`` (the default) or, as in ntpd, any ``limited``
        entry (``disable monitor`` cannot switch rate limiting off behind the admin's back)."""
        table = RestrictTable.from_config(config.restrict, resolve)
        limiter = None
        if "monitor" in config.enabled or table.has_limited:
            limiter = RateLimiter(MruLimits.from_config(config.mru, config.discard), rng=rng)
        return cls(table, limiter, rng=rng)

    def reload(self, table: RestrictTable) -> None:
        """Swap in a new table; MRU entries notice the new generation and look up again."""
        self.table = table

    @property
    def monitoring(self) -> bool:
        return self.limiter is not None

    def check(self, host: str, port: int, mode: int, version: int, now_ns: int,
              has_mac: bool = False) -> Decision:  # fmt: skip
        """Decide for one datagram from ``host``:``port`` with ``mode``/``version`` received at
        ``now_ns``. ``has_mac``: the datagram carries more than the 48-byte header."""
        stats = self.stats
        stats.checked += 1
        table = self.table
        limiter = self.limiter
        entry = limiter.get(host) if limiter is not None else None
        if (entry is not None and entry.generation == table.generation
                and (not table.has_ntpport or (port == NTP_PORT) == entry.from_ntp_port)):
            flags = entry.restrict_flags
            family = entry.family
            value = entry.value
        else:
            try:
                family, value = parse_host(host)
            except ValueError:
                stats.bad_address += 1
                self.last_flags = _IGNORE
                return Decision.DROP
            flags = table.lookup_int(family, value, port)
            if entry is not None:
                entry.restrict_flags = flags
                entry.generation = table.generation
                entry.from_ntp_port = port == NTP_PORT
        self.last_flags = flags
        if flags & _IGNORE:
            stats.ignored += 1
            return Decision.DROP
        if mode == _MODE_PRIVATE:
            return Decision.DROP
        if mode == _MODE_CONTROL:
            if flags & _NOQUERY:
                stats.noquery += 1
                return Decision.DROP
            if limiter is not None:
                self.last_flags = limiter.observe(host, port, mode, version, now_ns, flags,
                                                  table.generation, family, value, entry)
            return Decision.SERVE
        if flags & _NOSERVE:
            stats.noserve += 1
            return Decision.DROP
        if flags & _FLAKE and self._rng() < 0.1:
            stats.flake += 1
            return Decision.DROP
        if version != _NTP_VERSION and (flags & _VERSION or not 1 <= version < _NTP_VERSION):
            stats.version += 1
            return Decision.DROP
        if flags & _NOTRUST and not has_mac:
            stats.notrust += 1
            return Decision.DROP
        if limiter is None:
            self.last_flags = flags = flags & _DOUSE
            return Decision.SERVE
        flags = limiter.observe(host, port, mode, version, now_ns, flags, table.generation,
                                family, value, entry)  # fmt: skip
        self.last_flags = flags
        if flags & _LIMITED:
            stats.limited += 1
            if not flags & _KOD or mode == _MODE_SERVER or mode == _MODE_BROADCAST:
                return Decision.DROP
            stats.kod += 1
            return Decision.KOD
        return Decision.SERVE

    def check_clients(self, addresses: Sequence[tuple], starts: Sequence[int],
                      versions: Sequence[int], times: Sequence[int]) -> dict[int, Decision]:
        """Decide for a batch of plain time requests (mode 3, 48 bytes: no MAC), in arrival
        order: request ``k`` was received at ``times[k]`` (Unix ns) with ``versions[k]``;
        requests ``starts[j]`` up to ``starts[j + 1] - 1`` (the last run: to the end) came
        from ``addresses[j]`` (host, port, ...). Returns the decisions that are not SERVE, by
        request index.

        The same decisions, MRU list, counters and ``last_flags`` as one ``check`` per request
        in that order; but the table lookup is cached per address until the table changes,
        and each run of requests from one address updates its MRU entry in one loop."""
        out: dict[int, Decision] = {}
        total = len(times)
        if not total:
            return out
        stats = self.stats
        check = self.check
        limiter = self.limiter
        get = limiter.get if limiter is not None else None
        table = self.table
        generation = table.generation
        ntpport = table.has_ntpport
        if self._cache_generation != generation or len(self._flags_cache) > _FLAGS_CACHE_MAX:
            self._flags_cache.clear()
            self._cache_generation = generation
        cache = self._flags_cache
        if limiter is not None:
            # Runs of versions 1-4 from addresses whose entries are current: the compiled
            # loop, where built.
            done, checked, last, limited = limiter.observe_current_runs(
                addresses, starts, versions, times, generation, ntpport, _REFUSED | _PER_REQUEST)  # fmt: skip
            if done:
                stats.checked += checked
                self.last_flags = last
                self._decide_limited(limited, out)
                if done == len(starts):
                    return out
                addresses, starts = addresses[done:], starts[done:]
        # Anything but versions 1-4 takes the per-request path (which knows what to refuse).
        rest = versions[starts[0]:]
        plain = min(rest) >= 1 and max(rest) <= _NTP_VERSION
        stops = list(starts[1:])
        stops.append(total)
        for address, start, stop in zip(addresses, starts, stops, strict=True):
            host, port = address[0], address[1]
            k = start
            while k < stop:
                entry = get(host) if get is not None else None
                if entry is not None:
                    if not (entry.generation == generation
                            and (not ntpport or (port == NTP_PORT) == entry.from_ntp_port)):
                        flags = -1  # stale cache: ``check`` looks up and refreshes it
                    else:
                        flags = entry.restrict_flags
                else:
                    key = (host, port == NTP_PORT)
                    known = cache.get(key)
                    if known is None:
                        try:
                            family, value = parse_host(host)
                            known = (table.lookup_int(family, value, port), family, value)
                        except ValueError:
                            known = (-1, -1, -1)  # ``check`` counts and refuses it
                        cache[key] = known
                    flags, family, value = known
                if flags >= 0 and flags & _REFUSED:
                    # Refused before anything is recorded: count and drop the whole run.
                    count = stop - k
                    stats.checked += count
                    if flags & _IGNORE:
                        stats.ignored += count
                    else:
                        stats.noserve += count
                    self.last_flags = flags
                    for i in range(k, stop):
                        out[i] = Decision.DROP
                    break
                if flags < 0 or not plain or flags & _PER_REQUEST:
                    decision = check(host, port, _MODE_CLIENT, versions[k], times[k], False)
                    if decision is not Decision.SERVE:
                        out[k] = decision
                    k += 1
                    continue
                if entry is None and limiter is not None:
                    # A new MRU entry (served: a first packet is within any limit): what
                    # ``check`` does, without looking the address up again.
                    stats.checked += 1
                    self.last_flags = limiter.insert(host, port, _MODE_CLIENT, versions[k],
                                                     times[k], flags, generation, family,
                                                     value)  # fmt: skip
                    k += 1
                    continue
                stats.checked += stop - k
                if limiter is None or entry is None:
                    self.last_flags = flags & _DOUSE
                    break
                limited: list[tuple[int, int]] | None = [] if flags & _LIMITED else None
                limiter.observe_run(entry, port, versions, times, k, stop, flags, limited)
                self.last_flags = entry.flags
                if limited:
                    self._decide_limited(limited, out)
                break
        return out

    def known_sender_args(self) -> tuple | None:
        """For ``_hotpath.serve_known``: the MRU list and limits, with what it must leave to
        ``check_clients`` (refused and per-request flags); None without a compiled list."""
        limiter = self.limiter
        if limiter is None or not limiter.compiled:
            return None
        table = self.table
        return limiter.compiled_args(table.generation, table.has_ntpport,
                                     _REFUSED | _PER_REQUEST)  # fmt: skip

    def record_known(self, checked: int, over: int, last: int,
                     limited: list[tuple[int, int]]) -> dict[int, Decision]:  # fmt: skip
        """Count what ``serve_known`` decided (``checked`` requests, ``over`` of them over the
        limits, ``limited`` (slot, flags) those refused for it) as ``check`` would; the
        decisions for the refused, by slot."""
        out: dict[int, Decision] = {}
        if checked:
            self.stats.checked += checked
            self.last_flags = last
            if self.limiter is not None:
                self.limiter.stats.limited += over
            self._decide_limited(limited, out)
        return out

    def _decide_limited(self, limited: list[tuple[int, int]], out: dict[int, Decision]) -> None:
        """Requests over the limits, (index, flags) each: a KoD where the flags allow one,
        else dropped; counted as ``check`` counts them."""
        stats = self.stats
        for i, got in limited:
            stats.limited += 1
            if got & _KOD:
                stats.kod += 1
                out[i] = Decision.KOD
            else:
                out[i] = Decision.DROP

    def flags_for(self, host: str, port: int = 0) -> int:
        """The table's flags for ``host`` without recording anything (associations: ``notrust``,
        ``nopeer``; ``ntpq -c reslist``)."""
        return self.table.lookup(host, port)

    def mru_entries(self) -> Iterator[MruEntry]:
        """The MRU list, most recent first (empty when monitoring is off)."""
        return self.limiter.entries() if self.limiter is not None else iter(())

    def add_source(self, host: str) -> bool:
        return self.table.add_source(host)

    def remove_source(self, host: str) -> None:
        self.table.remove_source(host)

    def server_hook(
        self, address: tuple, mode: int, version: int, rx_ns: int, has_mac: bool
    ) -> str:
        """``NtpServer(access=...)``: the server passes the source address, mode, version,
        kernel receive time and whether a MAC may follow the header."""
        return self.check(address[0], address[1], mode, version, rx_ns, has_mac)


def control_allowed(flags: int, opcode: int) -> bool:
    """Whether a mode-6 request with ``opcode`` may be answered for a host with ``flags``
    (noquery already refused it whole): nomodify stops writes, notrap the trap requests,
    nomrulist the MRU list."""
    if flags & Flag.NOQUERY:
        return False
    if flags & Flag.NOMODIFY and opcode in CONTROL_WRITE_OPCODES:
        return False
    if flags & Flag.NOTRAP and opcode in CONTROL_TRAP_OPCODES:
        return False
    return not (flags & Flag.NOMRULIST and opcode in CONTROL_MRULIST_OPCODES)


__all__ = [
    "AccessControl",
    "AccessStats",
    "CONTROL_MRULIST_OPCODES",
    "Decision",
    "control_allowed",
    "CONTROL_TRAP_OPCODES",
    "CONTROL_WRITE_OPCODES",
    "FLAG_NAMES",
    "Flag",
    "NTP_PORT",
    "RestrictTable",
    "Rule",
    "flag_names",
    "flags_from_names",
    "parse_host",
    "system_resolver",
]
