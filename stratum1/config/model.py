"""The typed, immutable configuration that ntp.conf parses into.

Every field has the default ntpd uses when the directive is absent, so consumers never need to
know which lines were written. Collections are tuples or frozensets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Location:
    """Where a statement was read: ``str(loc)`` is ``file:line``."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line > 0 else self.file


@dataclass(frozen=True, slots=True)
class RefclockConfig:
    """One reference clock (127.127.t.u), from ``server``+``fudge`` or ntpsec ``refclock``."""

    type: int
    unit: int
    driver: str
    mode: int | None = None
    path: str | None = None
    ppspath: str | None = None
    baud: int | None = None
    subtype: int | None = None
    time1: float | None = None
    time2: float | None = None
    stratum: int | None = None
    refid: str | None = None
    flag1: bool | None = None
    flag2: bool | None = None
    flag3: bool | None = None
    flag4: bool | None = None
    minjitter: float | None = None
    prefer: bool = False
    noselect: bool = False
    true: bool = False
    iburst: bool = False
    minpoll: int | None = None
    maxpoll: int | None = None
    location: Location | None = None

    @property
    def address(self) -> str:
        return f"127.127.{self.type}.{self.unit}"


@dataclass(frozen=True, slots=True)
class AssociationConfig:
    """A network association: server, peer, pool, broadcast or manycastclient."""

    kind: str
    host: str
    family: int | None
    iburst: bool = False
    burst: bool = False
    prefer: bool = False
    noselect: bool = False
    true: bool = False
    xleave: bool = False
    preempt: bool = False
    minpoll: int = 6
    maxpoll: int = 10
    version: int = 4
    key: int | None = None
    ttl: int | None = None
    mode: int | None = None
    location: Location | None = None
    nts: bool = False


@dataclass(frozen=True, slots=True)
class RestrictEntry:
    """One ``restrict`` line. ``address`` None means ``default`` (or ``source`` if set)."""

    address: str | None
    mask: str | None
    family: int | None
    source: bool
    flags: frozenset[str]
    location: Location | None = None
    ippeerlimit: int | None = None


@dataclass(frozen=True, slots=True)
class Tos:
    """``tos`` system options (ntpd defaults)."""

    ceiling: int = 15
    cohort: bool = False
    floor: int = 1
    orphan: int = 16
    orphanwait: float = 300.0
    mindist: float = 0.001
    maxdist: float = 1.5
    minclock: int = 3
    minsane: int = 1
    maxclock: int = 10
    beacon: int = 3600
    basedate: str | None = None


@dataclass(frozen=True, slots=True)
class Tinker:
    """``tinker`` discipline constants. ``freq``/``huffpuff`` None: not set (disabled)."""

    step: float = 0.128
    stepout: float = 900.0
    panic: float = 1000.0
    allan: float = 11.0
    dispersion: float = 15.0
    freq: float | None = None
    huffpuff: float | None = None
    stepback: float | None = None
    stepfwd: float | None = None
    tick: float | None = None


@dataclass(frozen=True, slots=True)
class Discard:
    """``discard`` rate-limit parameters: average/minimum in log2 s / s, monitor in packets/s."""

    average: int = 3
    minimum: int = 2
    monitor: int = 3000


@dataclass(frozen=True, slots=True)
class InterfaceRule:
    """One ``interface`` line: ``action`` on the interfaces that ``match``/``value`` select."""

    action: str  # "listen" | "ignore" | "drop"
    match: str  # "all" | "ipv4" | "ipv6" | "wildcard" | "name" | "address"
    value: str | None = None  # interface name or address (match "name" / "address")
    prefixlen: int | None = None
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class Filegen:
    """A statistics file generation set (``filegen`` / ``statistics``)."""

    name: str
    file: str
    type: str = "day"
    link: bool = True
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class SetVar:
    """``setvar name = value [default]``: a system variable ntpq can read."""

    name: str
    value: str
    default: bool = False


@dataclass(frozen=True, slots=True)
class Mru:
    """``mru`` limits of the monitoring (MRU) list; None: the daemon's default."""

    maxdepth: int | None = None
    maxmem: int | None = None
    mindepth: int | None = None
    maxage: int | None = None
    minage: int | None = None
    initalloc: int | None = None
    initmem: int | None = None
    incalloc: int | None = None
    incmem: int | None = None


@dataclass(frozen=True, slots=True)
class Rlimit:
    """``rlimit`` resource limits; None: unchanged."""

    memlock: int | None = None
    stacksize: int | None = None
    filenum: int | None = None


@dataclass(frozen=True, slots=True)
class NtsConfig:
    """ntpsec ``nts`` server settings (recorded; used when NTS is available)."""

    enable: bool = False
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    cookie: str | None = None
    mintls: str | None = None
    maxtls: str | None = None
    aead: str | None = None


#: The ``enable``/``disable`` flags and their ntpd defaults.
DEFAULT_ENABLED = frozenset({"auth", "kernel", "monitor", "ntp", "stats"})
SYSTEM_FLAGS = frozenset(
    {
        "auth",
        "bclient",
        "calibrate",
        "kernel",
        "monitor",
        "ntp",
        "stats",
        "pps",
        "peer_clear_digest_early",
        "unpeer_crypto_early",
        "unpeer_crypto_nak_early",
        "unpeer_digest_early",
    }
)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``source_files`` lists the files read, top file first."""

    refclocks: tuple[RefclockConfig, ...] = ()
    associations: tuple[AssociationConfig, ...] = ()
    restrict: tuple[RestrictEntry, ...] = ()
    tos: Tos = field(default_factory=Tos)
    tinker: Tinker = field(default_factory=Tinker)
    discard: Discard = field(default_factory=Discard)
    driftfile: str | None = None
    leapfile: str | None = None
    logfile: str | None = None
    logconfig: tuple[str, ...] = ()
    pidfile: str | None = None
    statsdir: str | None = None
    keys: str | None = None
    keysdir: str | None = None
    trustedkeys: frozenset[int] = frozenset()
    requestkey: int | None = None
    controlkey: int | None = None
    statistics: frozenset[str] = frozenset()
    filegens: tuple[Filegen, ...] = ()
    enabled: frozenset[str] = DEFAULT_ENABLED
    interfaces: tuple[InterfaceRule, ...] = ()
    setvars: tuple[SetVar, ...] = ()
    ttl: tuple[int, ...] = ()
    broadcastclient: bool = False
    novolley: bool = False
    broadcastdelay: float | None = None
    multicastclient: tuple[str, ...] = ()
    manycastserver: tuple[str, ...] = ()
    mru: Mru = field(default_factory=Mru)
    rlimit: Rlimit = field(default_factory=Rlimit)
    dscp: int | None = None
    leapsmearinterval: int | None = None
    nonvolatile: float | None = None
    nts: NtsConfig = field(default_factory=NtsConfig)
    source_files: tuple[str, ...] = ()

    def refclock(self, type_: int, unit: int) -> RefclockConfig | None:
        """The refclock 127.127.type_.unit, or None."""
        for rc in self.refclocks:
            if rc.type == type_ and rc.unit == unit:
                return rc
        return None
