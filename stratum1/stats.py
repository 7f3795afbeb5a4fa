"""ntpd's statistics files: file generations (``statsdir``/``statistics``/``filegen``) and the
loopstats, peerstats, clockstats, rawstats and sysstats records, buffered off the packet path."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import IO, Any

from .control import PEER_CONFIG, PEER_REACH, peer_status
from .ntptime import NS_PER_S
from .refclock.clockstats import clockstats_line, stats_prefix

log = logging.getLogger(__name__)

#: Where the files go without ``statsdir`` (the systemd unit's LogsDirectory).
DEFAULT_STATSDIR = "/var/log/stratum1"
FILE_TYPES = ("none", "pid", "day", "week", "month", "year", "age")
#: The files this module writes (ntpd's other names are accepted by the parser and ignored).
STATS_NAMES = ("loopstats", "peerstats", "clockstats", "rawstats", "sysstats")
#: ntpd writes sysstats once an hour and then clears the counters.
SYSSTATS_INTERVAL_S = 3600
#: Lines kept per file while it cannot be written; older ones are dropped (and counted).
MAX_PENDING = 10_000
#: Pending lines that make a flush happen before the next tick.
FLUSH_AT = 1_000
SECS_PER_DAY = 86_400


# -- file generations --------------------------------------------------------------------------


def generation_suffix(type_: str, unix_s: int, *, pid: int, uptime_s: int) -> str:
    """The suffix ntpd appends to a file of generation ``type_`` at ``unix_s`` (UTC).

    ``none`` has no suffix; ``pid`` is ``.#PID``; ``day`` ``.YYYYMMDD``; ``week`` the ISO
    week ``.YYYYwWW``; ``month`` ``.YYYYMM``; ``year`` ``.YYYY``; ``age`` ``.aNNNNNNNN``, the
    daemon's uptime in seconds rounded down to a whole day.
    """
    if type_ == "none":
        return ""
    if type_ == "pid":
        return f".#{pid}"
    if type_ == "age":
        return f".a{uptime_s - uptime_s % SECS_PER_DAY:08d}"
    day = datetime.datetime.fromtimestamp(unix_s, tz=datetime.UTC)
    if type_ == "day":
        return f".{day:%Y%m%d}"
    if type_ == "week":
        year, week, _ = day.isocalendar()
        return f".{year:04d}w{week:02d}"
    if type_ == "month":
        return f".{day:%Y%m}"
    if type_ == "year":
        return f".{day:%Y}"
    raise ValueError(f"unknown file generation type {type_!r}")


def valid_filename(name: str) -> bool:
    """ntpd's rule: a file name is relative to statsdir and never climbs out of it."""
    if not name or name.startswith("/"):
        return False
    return ".." not in name.split("/")


class FileGeneration:
    """One statistics file set: the current generation is picked from each line's own time,
    lines wait in memory until ``flush()``, and a write failure is logged once, never raised."""

    def __init__(
        self,
        name: str,
        directory: str,
        file: str | None = None,
        type_: str = "day",
        link: bool = True,
        enabled: bool = False,
        *,
        pid: Callable[[], int] = os.getpid,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if type_ not in FILE_TYPES:
            raise ValueError(f"filegen {name}: unknown type {type_!r}")
        file = file or name
        if not valid_filename(file):
            raise ValueError(f"filegen {name}: file {file!r} must stay inside statsdir")
        self.name = name
        self.directory = directory
        self.file = file
        self.type = type_
        self.link = link
        self.enabled = enabled
        self._pid = pid
        self._pending: deque[tuple[str, str]] = deque(maxlen=max_pending)
        self._fp: IO[str] | None = None
        self._suffix: str | None = None
        self._failing = False
        self.written = 0  # lines on disk
        self.dropped = 0  # lines lost because the file could not be written for too long
        self._conflicts = 0

    @property
    def basename(self) -> str:
        """The path without a generation suffix (the link to the current file)."""
        return os.path.join(self.directory, self.file)

    def path(self, suffix: str) -> str:
        return self.basename + suffix

    @property
    def current_path(self) -> str | None:
        """The file now open, if any."""
        return None if self._suffix is None else self.path(self._suffix)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def settings(self) -> tuple[str, str, str, bool, bool]:
        return (self.directory, self.file, self.type, self.link, self.enabled)

    def append(self, now_ns: int, line: str, uptime_s: int = 0) -> None:
        """Queue one record (without its newline) for the generation ``now_ns`` falls in."""
        if not self.enabled:
            return
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        suffix = generation_suffix(self.type, now_ns // NS_PER_S, pid=self._pid(),
                                   uptime_s=uptime_s)
        self._pending.append((suffix, line))

    def flush(self) -> bool:
        """Write the queued lines; False (and the lines kept) when the file cannot be written."""
        while self._pending:
            suffix = self._pending[0][0]
            batch = []
            while self._pending and self._pending[0][0] == suffix:
                batch.append(self._pending.popleft())
            try:
                fp = self._open(suffix)
                fp.write("".join(f"{line}\n" for _, line in batch))
                fp.flush()
            except OSError as exc:
                self._pending.extendleft(reversed(batch))
                self._close_file()
                if not self._failing:
                    self._failing = True
                    if exc.errno == errno.ENOENT and not os.path.isdir(self.directory):
                        log.error("statistics directory %s does not exist: create it, writable"
                                  " by the daemon, or set statsdir (%s lines are kept meanwhile)",
                                  self.directory, self.name)
                        return False
                    log.error("cannot write %s statistics to %s: %s; keeping up to %d lines and"
                              " retrying quietly", self.name, self.path(suffix),
                              exc.strerror or exc, self._pending.maxlen)
                return False
            self.written += len(batch)
        if self._failing:
            self._failing = False
            log.warning("%s statistics are being written again to %s (%d lines were dropped)",
                        self.name, self.current_path, self.dropped)
        return True

    def close(self) -> None:
        """Flush what can be written and close the file."""
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._fp is not None:
            try:
                self._fp.close()
            except OSError:
                pass
        self._fp = None
        self._suffix = None

    def _open(self, suffix: str) -> IO[str]:
        if self._fp is not None and suffix == self._suffix:
            return self._fp
        path = self.path(suffix)
        if suffix:
            self._clear_basename()
        fp = open(path, "a", encoding="ascii", errors="replace")
        self._close_file()
        self._fp, self._suffix = fp, suffix
        if suffix and self.link:
            self._link_basename(path)
        return fp

    def _clear_basename(self) -> None:
        """ntpd's rule for the name the link takes: another link to a generation is removed; a
        plain file nobody links to is kept under ``NAME.PIDCn`` rather than destroyed."""
        base = self.basename
        try:
            st = os.lstat(base)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot check %s: %s", base, exc.strerror)
            return
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            _try(os.unlink, base)
        elif stat.S_ISREG(st.st_mode):
            saved = f"{base}.{self._pid()}C{self._conflicts}"
            self._conflicts += 1
            if _try(os.rename, base, saved):
                log.warning("%s was a plain file: kept as %s", base, saved)
        else:
            log.warning("%s is not a regular file (mode 0%o): no link made", base, st.st_mode)

    def _link_basename(self, path: str) -> None:
        # A hard link, as ntpd makes: it stays valid whatever directory the reader is in.
        try:
            os.link(path, self.basename)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                log.warning("cannot link %s to %s: %s", self.basename, path, exc.strerror)


def _try(func: Callable[..., Any], *args: str) -> bool:
    try:
        func(*args)
    except OSError as exc:
        log.warning("%s%r failed: %s", func.__name__, args, exc.strerror)
        return False
    return True


# -- record formats ----------------------------------------------------------------------------


def ntp_seconds(timestamp: int) -> str:
    """A 64-bit NTP timestamp as seconds since 1900 with 9 decimals (ntpd's ``ulfptoa(t, 9)``)."""
    seconds = (timestamp >> 32) & 0xFFFFFFFF
    nanos = ((timestamp & 0xFFFFFFFF) * NS_PER_S + (1 << 31)) >> 32
    if nanos == NS_PER_S:
        seconds, nanos = seconds + 1, 0
    return f"{seconds}.{nanos:09d}"


def refid_text(refid: bytes | str, stratum: int) -> str:
    """The refid as ntpd's rawstats shows it: a dotted quad above stratum 1, else the text."""
    if isinstance(refid, str):
        return refid
    raw = bytes(refid)[:4].ljust(4, b"\0")
    if 1 < stratum < 16:
        return ".".join(str(b) for b in raw)
    text = raw.rstrip(b"\0").decode("ascii", "replace")
    return "".join(c if c.isprintable() and not c.isspace() else "." for c in text)


def loopstats_line(now_ns: int, offset: float, freq_ppm: float, jitter: float,
                   wander_ppm: float, tc: int) -> str:
    """``MJD sec offset(s) freq(PPM) sys_jitter(s) wander(PPM) tc`` (ntpsec's precision)."""
    return (f"{stats_prefix(now_ns)} {offset:.9f} {freq_ppm:.6f} {jitter:.9f}"
            f" {wander_ppm:.6f} {int(tc)}")


def peerstats_line(now_ns: int, address: str, status_word: int, offset: float, delay: float,
                   dispersion: float, jitter: float) -> str:
    """``MJD sec address status(hex) offset delay dispersion jitter`` (seconds)."""
    return (f"{stats_prefix(now_ns)} {address} {status_word & 0xFFFF:x} {offset:.9f}"
            f" {delay:.9f} {dispersion:.9f} {jitter:.9f}")


def rawstats_line(now_ns: int, src: str, dst: str | None, t1: int, t2: int, t3: int, t4: int,
                  *, leap: int, version: int, mode: int, stratum: int, ppoll: int,
                  precision: int, root_delay: float, root_dispersion: float,
                  refid: bytes | str) -> str:
    """``MJD sec src dst t1 t2 t3 t4 leap version mode stratum ppoll precision rootdelay
    rootdisp refid`` (ntpd 4.2.8's format; the timestamps are NTP seconds)."""
    stamps = " ".join(ntp_seconds(t) for t in (t1, t2, t3, t4))
    return (f"{stats_prefix(now_ns)} {src} {dst or '-'} {stamps} {leap & 3} {version}"
            f" {mode} {stratum} {ppoll} {precision} {root_delay:.6f} {root_dispersion:.6f}"
            f" {refid_text(refid, stratum)}")


@dataclass(frozen=True, slots=True)
class SysCounters:
    """Running totals behind a sysstats line, in ntpd's order (each line shows the change
    since the line before, as ntpd clears its counters after writing one)."""

    received: int = 0  # packets received
    processed: int = 0  # packets for this host
    new_version: int = 0  # current version
    old_version: int = 0  # older versions
    restricted: int = 0  # access denied
    bad_length: int = 0  # bad length or format
    bad_auth: int = 0  # bad authentication
    declined: int = 0  # declined (modes we do not serve)
    limit_rejected: int = 0  # rate limited
    kod_sent: int = 0  # kiss-o'-death sent

    def __sub__(self, other: SysCounters) -> SysCounters:
        return SysCounters(*(max(0, getattr(self, f.name) - getattr(other, f.name))
                             for f in fields(self)))

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_server_stats(cls, stats: Iterable[Any]) -> SysCounters:
        """Totals over every socket's ``stratum1.server.ServerStats``."""
        total = dict.fromkeys((f.name for f in fields(cls)), 0)
        for s in stats:
            g = _counter_reader(s)
            total["received"] += g("received")
            total["processed"] += max(0, g("received") - g("dropped"))
            total["new_version"] += g("new_version")
            total["old_version"] += g("old_version")
            total["restricted"] += g("restricted")
            total["bad_length"] += g("malformed") + g("bad_version")
            total["bad_auth"] += g("bad_auth") + g("crypto_naks")
            total["declined"] += g("mode7") + g("not_a_request") + g("oversize")
            total["limit_rejected"] += g("rate_limited") + g("kod_sent")
            total["kod_sent"] += g("kod_sent")
        return cls(**total)


def _counter_reader(stats: Any) -> Callable[[str], int]:
    def get(name: str) -> int:
        value = getattr(stats, name, 0)
        return int(value) if isinstance(value, int) else 0

    return get


def sysstats_line(now_ns: int, since_reset_s: int, counts: SysCounters) -> str:
    """``MJD sec since_reset received processed current old restricted badlength badauth
    declined limited kod``."""
    return f"{stats_prefix(now_ns)} {int(since_reset_s)} " + " ".join(map(str, counts.values()))


def peer_status_word(assoc: Any) -> int:
    """The association's status word as ntpq and peerstats show it."""
    flags = PEER_CONFIG | (PEER_REACH if getattr(assoc, "reach", 0) else 0)
    return peer_status(flags, int(getattr(assoc, "select_code", 0)),
                       int(getattr(assoc, "event_count", 0)), int(getattr(assoc, "last_event", 0)))


# -- the daemon's writer -----------------------------------------------------------------------


class StatsWriter:
    """All statistics files of one daemon, configured from a ``stratum1.config.model.Config``.

    The record methods only format and queue (cheap, safe anywhere but the packet path); the
    files are written by ``flush()``, which ``tick()`` calls once a second, and ``tick()`` also
    writes the hourly sysstats line. Nothing here raises on a write failure.
    """

    def __init__(self, config: Any, clock: Any, *, pid: Callable[[], int] = os.getpid) -> None:
        self.clock = clock
        self.started_ns = int(clock.now_ns())
        self._pid = pid
        self.files: dict[str, FileGeneration] = {}
        self.active = False
        self.statsdir = DEFAULT_STATSDIR
        self._sys_reset_ns: int | None = None
        self._sys_base = SysCounters()
        self._loop_updates: int | None = None
        self.reconfigure(config)

    # -- configuration ------------------------------------------------------------------------
    def reconfigure(self, config: Any) -> None:
        """Apply a (re)loaded configuration; files whose settings did not change stay open."""
        self.statsdir = getattr(config, "statsdir", None) or DEFAULT_STATSDIR
        self.active = "stats" in getattr(config, "enabled", frozenset({"stats"}))
        wanted = {fg.name: fg for fg in getattr(config, "filegens", ())}
        for name in STATS_NAMES:
            fg = wanted.get(name)
            try:
                new = FileGeneration(
                    name,
                    self.statsdir,
                    getattr(fg, "file", None) or name,
                    getattr(fg, "type", "day"),
                    bool(getattr(fg, "link", True)),
                    bool(getattr(fg, "enabled", False)),
                    pid=self._pid,
                )
            except ValueError as exc:
                log.error("%s; %s is not written", exc, name)
                new = FileGeneration(name, self.statsdir, pid=self._pid)
            old = self.files.get(name)
            if old is not None and old.settings() == new.settings():
                continue
            if old is not None:
                old.close()
            self.files[name] = new

    def enabled(self, name: str) -> bool:
        """Whether records of ``name`` are being written now."""
        f = self.files.get(name)
        return bool(self.active and f is not None and f.enabled)

    # -- records ------------------------------------------------------------------------------
    def _queue(self, name: str, now_ns: int, line: str) -> str:
        f = self.files[name]
        f.append(now_ns, line, uptime_s=max(0, now_ns - self.started_ns) // NS_PER_S)
        if f.pending >= FLUSH_AT:
            f.flush()
        return line

    def loopstats(self, now_ns: int, offset: float, freq_ppm: float, jitter: float,
                  wander: float, tc: int) -> str | None:
        """One clock-discipline update: offset (s), frequency (PPM), jitter (s), wander (PPM),
        time constant (log2 s)."""
        if not self.enabled("loopstats"):
            return None
        return self._queue("loopstats", now_ns,
                           loopstats_line(now_ns, offset, freq_ppm, jitter, wander, tc))

    def record_loop(self, now_ns: int, snapshot: Any, discipline: Any) -> str | None:
        """``loopstats`` from the published snapshot (offset) and the
        ``stratum1.discipline.Discipline`` (frequency, jitter, wander, time constant).

        Call it after every selection run: it writes only when the discipline's update count
        moved since the last call, so one clock update gives one line, as in ntpd.
        """
        updates = getattr(discipline, "updates", None)
        if updates is not None:
            if updates == self._loop_updates:
                return None
            self._loop_updates = updates
        if not self.enabled("loopstats"):
            return None
        freq = discipline.frequency_ppm()
        return self.loopstats(now_ns, float(snapshot.offset), float(freq),
                              float(discipline.jitter), float(discipline.wander),
                              int(discipline.poll))

    def peerstats(self, now_ns: int, address: str, status_word: int, offset: float,
                  delay: float, dispersion: float, jitter: float) -> str | None:
        """One clock-filter update of a source (seconds; ``address`` 127.127.t.u for refclocks)."""
        if not self.enabled("peerstats"):
            return None
        return self._queue("peerstats", now_ns, peerstats_line(
            now_ns, address, status_word, offset, delay, dispersion, jitter))

    def record_peer(self, now_ns: int, assoc: Any, address: str | None = None) -> str | None:
        """``peerstats`` from a ``stratum1.association.Association``."""
        if not self.enabled("peerstats"):
            return None
        addr = address or getattr(assoc, "address", None) or getattr(assoc, "name", "?")
        return self.peerstats(now_ns, str(addr), peer_status_word(assoc), float(assoc.offset),
                              float(assoc.delay), float(assoc.dispersion), float(assoc.jitter))

    def clockstats(self, now_ns: int, address: str, timecode: str) -> str | None:
        """A refclock's last time code (or tally) as one line."""
        if not self.enabled("clockstats"):
            return None
        return self._queue("clockstats", now_ns, clockstats_line(now_ns, address, timecode))

    def clockstats_sink(self, line: str) -> None:
        """A ready-made clockstats line (``RefclockUnit(clockstats=writer.clockstats_sink)``)."""
        if self.enabled("clockstats"):
            self._queue("clockstats", int(self.clock.now_ns()), line.rstrip("\r\n"))

    def rawstats(self, now_ns: int, src: str, dst: str | None, t1: int, t2: int, t3: int,
                 t4: int, **header: Any) -> str | None:
        """The four timestamps (64-bit NTP) of one exchange with a network source, and its
        header fields: leap, version, mode, stratum, ppoll, precision, root_delay,
        root_dispersion, refid."""
        if not self.enabled("rawstats"):
            return None
        return self._queue("rawstats", now_ns,
                           rawstats_line(now_ns, src, dst, t1, t2, t3, t4, **header))

    def sysstats(self, now_ns: int, counters: SysCounters) -> str | None:
        """The change of ``counters`` (running totals) since the last sysstats line."""
        since = self.started_ns if self._sys_reset_ns is None else self._sys_reset_ns
        delta = counters - self._sys_base
        self._sys_base, self._sys_reset_ns = counters, now_ns
        if not self.enabled("sysstats"):
            return None
        return self._queue("sysstats", now_ns,
                           sysstats_line(now_ns, max(0, now_ns - since) // NS_PER_S, delta))

    # -- housekeeping ---------------------------------------------------------------------------
    def tick(self, now_ns: int, counters: Callable[[], SysCounters] | None = None) -> None:
        """Once a second: the hourly sysstats line when due, then write everything queued."""
        if counters is not None:
            last = self.started_ns if self._sys_reset_ns is None else self._sys_reset_ns
            if now_ns - last >= SYSSTATS_INTERVAL_S * NS_PER_S:
                try:
                    self.sysstats(now_ns, counters())
                except Exception:  # a counters callback must not stop the statistics
                    log.exception("sysstats counters failed")
        self.flush()

    def attach(self, loop: Any, counters: Callable[[], SysCounters] | None = None) -> Any:
        """Run ``tick`` every second on the daemon's EventLoop; returns the timer."""
        return loop.call_every(1.0, lambda: self.tick(int(self.clock.now_ns()), counters))

    def flush(self) -> None:
        for f in self.files.values():
            if f.pending:
                f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


__all__ = [
    "DEFAULT_STATSDIR",
    "FileGeneration",
    "StatsWriter",
    "SysCounters",
    "generation_suffix",
    "loopstats_line",
    "ntp_seconds",
    "peer_status_word",
    "peerstats_line",
    "rawstats_line",
    "sysstats_line",
]
