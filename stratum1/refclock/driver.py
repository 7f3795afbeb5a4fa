"""The base class every reference-clock driver derives from, and the metadata it declares.

The class attributes are the driver's declaration: the config checker, ``stratum1 drivers
list`` and ntpq all read them without opening any device, so importing a driver module must stay
cheap (hardware libraries are imported inside methods, where they are used).

How a driver plugs in (chrony's init / poll / finish are our open / on_poll / close, and it
hands data over with "add sample" / "add pulse"):

* ``__init__(config, ctx)`` stores its RefclockConfig and DriverContext; it opens nothing.
* ``open()`` opens the device and registers descriptors / timers with ``ctx.loop``; it raises
  OSError with a clear message when the device is absent (the unit retries with back-off).
* As data arrives the driver calls ``ctx.add_sample(Sample(local_ns, reference_ns, leap))`` for
  a complete time code (``sample_fudge``, normally time1, is added by the framework) and/or
  ``ctx.add_pulse(local_ns)`` for a PPS edge (time1 is added; the framework numbers the second
  from the unit's latest time code, or from the system clock when synchronised).
  ``ctx.add_sample(sample, lock_only=True)`` gives a time code that only numbers pulses
  (strict PPS+time-code pairing, gpsd mode 1): serial time alone then never becomes a sample.
  ``ctx.log_timecode(text)`` records the last raw time code (clockstats, ``ntpq -c cv``);
  ``ctx.count(name)`` bumps a counter (``badformat`` and ``baddata`` are ntpd's own).
* On a read error, EOF or a vanished device it calls ``ctx.report_fault(message)`` and returns;
  the unit then calls ``close()`` and reopens later with a *new* driver instance (a stale
  instance's calls to its old context are ignored, so a late callback cannot pollute samples).
* ``on_poll()`` is called once per poll interval just before the unit reduces its samples (for
  drivers that sample on demand, like LOCAL); most drivers leave it empty.
* ``close()`` unregisters and releases everything; it must be safe to call twice.

The driver never filters, averages, applies fudge offsets or keeps reach: the unit
(``stratum1.refclock.unit.RefclockUnit``) does that once for every driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..clock import Clock
    from ..config.model import RefclockConfig
    from ..eventloop import EventLoop
    from ..sample import Sample

#: Fudge fields every refclock accepts, whatever the driver.
COMMON_FUDGE = frozenset({"stratum", "refid"})
#: All fudge fields the grammar knows.
FUDGE_FIELDS = frozenset(
    {"time1", "time2", "stratum", "refid", "flag1", "flag2", "flag3", "flag4", "minjitter"}
)
#: Options of the ntpsec ``refclock`` line beyond the association options.
REFCLOCK_OPTIONS = frozenset({"path", "ppspath", "baud", "mode", "subtype"})


class RefclockDriver:
    """A reference-clock driver type (``127.127.t.u``). Subclasses set the class attributes.

    The runtime interface (open / poll / close, and how samples reach the framework through
    DriverContext) is described in this module's docstring.
    """

    #: Type number t of 127.127.t.u.
    type: ClassVar[int]
    #: ntpsec ``refclock NAME`` spelling, lower case: "nmea", "pps", "shm", "local", ...
    name: ClassVar[str]
    #: What classic ntpq prints in ``name(unit)``: "GPS_NMEA", "PPS", "SHM", "LOCAL".
    ntpq_name: ClassVar[str]
    #: One-line description for ``drivers list``.
    description: ClassVar[str] = ""
    #: Default reference id (up to 4 ASCII characters).
    refid: ClassVar[str]
    #: Default precision, log2 seconds.
    precision: ClassVar[int] = -20
    #: Default stratum of the refclock itself (the server then shows stratum + 1).
    stratum: ClassVar[int] = 0
    #: Default poll exponent (log2 s).
    poll: ClassVar[int] = 6
    #: The fudge fields this driver uses and what each means for it ("time1": "PPS offset").
    #: ``stratum`` and ``refid`` are always accepted; any other field not listed here is a
    #: config error.
    fudge_meanings: ClassVar[dict[str, str]] = {}
    #: Which of REFCLOCK_OPTIONS (path, ppspath, baud, mode, subtype) the driver takes.
    options: ClassVar[frozenset[str]] = frozenset()
    #: Valid ``mode`` values (inclusive); None when the driver takes no mode.
    mode_range: ClassVar[tuple[int, int] | None] = None
    #: True for pulse-only sources (PPS): the system may make them the PPS peer (tally 'o').
    is_pps: ClassVar[bool] = False
    #: Highest unit number accepted.
    max_unit: ClassVar[int] = 3
    #: Device path templates formatted with ``unit=``, e.g. "/dev/gps{unit}".
    devices: ClassVar[tuple[str, ...]] = ()
    #: Which fudge field the framework adds to ``add_sample`` samples: "time1", or "time2" for
    #: drivers where time1 is the PPS offset and time2 the serial time-code offset (NMEA, ...).
    #: Pulses (``add_pulse``) always get time1.
    sample_fudge: ClassVar[str] = "time1"
    #: Precision (log2 s) while the unit's samples come from PPS pulses; None: ``precision``.
    pps_precision: ClassVar[int | None] = None
    #: Root dispersion the source itself adds, seconds (ntpd's LOCAL uses 0.01).
    rootdisp: ClassVar[float] = 0.0
    #: What the driver needs at run time, for ``drivers list``: keys of
    #: ``stratum1.refclock.presence.REQUIREMENTS`` ("pyserial", "libgpiod", "pps", "gpiochip",
    #: "gpsd", "sysv-shm", "serial-device"); "pps|gpiochip" means either will do.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: RefclockConfig, ctx: DriverContext) -> None:
        """``config`` is the unit's RefclockConfig (stratum1.config.model); ``ctx`` the
        framework's DriverContext. Constructing opens nothing."""
        self.config = config
        self.ctx = ctx

    def open(self) -> None:
        """Open devices and register descriptors/timers with ``ctx.loop``. Raise OSError (or
        another exception with a clear message) when the device is not there; the framework
        retries with back-off."""

    def on_poll(self) -> None:
        """Called once per poll interval, before the unit reduces its samples."""

    def close(self) -> None:
        """Unregister from the loop and release devices. Must be safe to call twice."""

    def status(self) -> dict[str, Any]:
        """Driver-specific live diagnostics (device, last timecode, satellites, ...)."""
        return {}

    def flag(self, n: int) -> bool:
        """The unit's fudge ``flag<n>`` (1-4); unset flags are off."""
        return bool(getattr(self.config, f"flag{n}", None))

    @classmethod
    def accepts_fudge(cls, field: str) -> bool:
        return field in COMMON_FUDGE or field in cls.fudge_meanings

    @classmethod
    def device_paths(cls, unit: int) -> tuple[str, ...]:
        return tuple(t.format(unit=unit) for t in cls.devices)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The declaration as plain data (for ``drivers list --json``)."""
        return {
            "type": cls.type,
            "name": cls.name,
            "ntpq_name": cls.ntpq_name,
            "description": cls.description,
            "refid": cls.refid,
            "precision": cls.precision,
            "stratum": cls.stratum,
            "poll": cls.poll,
            "fudge": dict(cls.fudge_meanings),
            "options": sorted(cls.options),
            "mode_range": cls.mode_range,
            "max_unit": cls.max_unit,
            "devices": list(cls.devices),
            "requires": list(cls.requires),
        }


class DriverContext(Protocol):
    """What the framework gives a running driver instance (chrony's refclock interface shape).

    A driver decodes and stamps; all filtering, fudge offsets and statistics live in the
    framework. The driver registers its descriptors and timers with ``loop`` and never loops
    or blocks on its own.
    """

    loop: EventLoop
    clock: Clock
    #: "127.127.t.u" of the unit, for log messages.
    address: str

    def add_sample(self, sample: Sample, *, lock_only: bool = False) -> None:
        """A complete sample: local time of the on-time epoch and the time it represents.

        ``lock_only=True``: the time code only numbers the pulses that follow (the unit's
        lock) and is never a sample itself, for sources that must serve PPS or nothing."""
        ...

    def add_pulse(self, local_ns: int) -> None:
        """A PPS edge at local time ``local_ns``; the framework numbers the second."""
        ...

    def report_fault(self, message: str) -> None:
        """The device failed (read error, unplugged, ...); the framework closes and reopens."""
        ...

    def log_timecode(self, timecode: str) -> None:
        """The last timecode received, for clockstats and ``ntpq -c cv``."""
        ...

    def count(self, counter: str, n: int = 1) -> None:
        """Bump a named diagnostic counter ("badformat", "baddata", "no_fix", ...)."""
        ...

    def set_precision(self, precision: int) -> None:
        """The source reported its own precision, log2 s (SHM, gpsd); overrides the default."""
        ...
