"""The pure NMEA 0183 decoder of the NMEA driver: byte stream in, framed lines, time codes or
typed errors out. No clock, no device, no I/O: "now" (the receive stamp) is an argument.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pynmea2

from stratum1.ntptime import NS_PER_S

# -- mode bits (ntpd refclock_nmea / driver20 numbering) ----------------------------------------
MODE_RMC = 0x1
MODE_GGA = 0x2
MODE_GLL = 0x4
MODE_ZDA = 0x8
MODE_SPEED_MASK = 0x70
MODE_DELAY_LOG = 0x80
MODE_PGRMF = 0x100
MODE_PUBX = 0x200
MODE_EXT_STATS = 0x10000
MODE_SILENT_PPS = 0x20000
MODE_DATE_TRUST = 0x40000
MODE_SENTENCE_MASK = 0xFF0F
#: Highest mode value accepted by the config checker.
MODE_MAX = 0x7FFFF

_SPEEDS = (4800, 9600, 19200, 38400, 57600, 115200)

#: Which mode bit selects which sentence type for timing.
SENTENCE_BITS: dict[str, int] = {
    "RMC": MODE_RMC,
    "GGA": MODE_GGA,
    "GLL": MODE_GLL,
    "ZDA": MODE_ZDA,
    "PUBX04": MODE_PUBX,
}

DAY_S = 86_400
WEEK_S = 7 * DAY_S
#: One GPS week-number rollover: 1024 weeks (about 19.6 years).
ROLLOVER_S = 1024 * WEEK_S
GPS_EPOCH_S = 315_964_800  # 1980-01-06T00:00:00Z
#: A date once seen anchors date-less sentences for this long (ntpd's DATE_HOLD).
DATE_HOLD_S = 16
#: Default rollover pivot (2026-01-01), safely before any date this code will run at: dates
#: earlier than a day before it are moved forward by 1024 weeks. The driver may pass a later
#: one (last known good time); tests pass their own.
DEFAULT_PIVOT_NS = 1_767_225_600 * NS_PER_S
#: A time code this much earlier than the last accepted one is a glitch and is rejected; a
#: bigger jump back is taken as a correction and followed.
BACKWARDS_WINDOW_S = 3600
#: Longest talker sentence accepted before the checksum; real multi-GNSS sentences exceed
#: NMEA's 80. Proprietary sentences (MediaTek's PMTKCHN: 200+) may run to MAX_FRAME.
MAX_BODY = 120
#: A frame longer than this without a line end is noise (baud mismatch, binary protocol).
MAX_FRAME = 320


def baud_from_mode(mode: int) -> int:
    """Serial speed selected by mode bits 4-6; anything out of range falls back to 4800."""
    code = (mode & MODE_SPEED_MASK) >> 4
    return _SPEEDS[code] if code < len(_SPEEDS) else 4800


def timing_sentences(mode: int) -> frozenset[str]:
    """Sentence types used for time: those selected by ``mode & 0xFF0F``, all when none is."""
    sel = mode & MODE_SENTENCE_MASK
    if not sel:
        return frozenset(SENTENCE_BITS)
    return frozenset(k for k, bit in SENTENCE_BITS.items() if sel & bit)


# -- errors -------------------------------------------------------------------------------------
class NmeaError(ValueError):
    """A sentence that yields no time. ``counter`` names the tally it bumps; ``outcome`` is
    "malformed" (syntax, checksum, impossible time/date) or "rejected" (valid sentence, no
    usable time); ``event`` the ntpd clock event name."""

    counter = "malformed"
    outcome = "malformed"
    event = "CEVNT_BADREPLY"


class FramingError(NmeaError):
    counter = "bad_syntax"


class ChecksumError(NmeaError):
    counter = "bad_checksum"


class BadTimeError(NmeaError):
    counter = "bad_time"
    event = "CEVNT_BADTIME"


class BadDateError(NmeaError):
    counter = "bad_date"
    event = "CEVNT_BADDATE"


class InvalidFixError(NmeaError):
    """The receiver says its fix (or its UTC) is not good enough for timing."""

    counter = "invalid"
    outcome = "rejected"


class NoDateError(NmeaError):
    """A date-less sentence and nothing to anchor its day to."""

    counter = "no_date"
    outcome = "rejected"


# -- framing ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """One candidate line cut from the byte stream. ``start``/``end`` are stream byte indices of
    its ``$`` and of its last byte (the LF, or the last byte kept for a bad frame)."""

    data: bytes
    start: int
    end: int
    problem: str | None = None  # None, "truncated" or "overlong"


class NmeaFramer:
    """Cuts a byte stream into ``$``...LF lines, resynchronising on every ``$``.

    Bytes outside a sentence (binary protocols, baud-mismatch noise) are counted in
    ``noise_bytes`` and dropped; a ``$`` inside a line ends the line as truncated (two sentences
    glued together); a line longer than MAX_FRAME is dropped as overlong.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.position = 0  # stream index of the next byte fed
        self.noise_bytes = 0
        self._buf = bytearray()
        self._start = -1  # stream index of the current line's '$', -1 outside a line
        self._discarding = False  # inside an overlong line: drop until '$' or LF

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        base = self.position
        i = 0
        n = len(data)
        while i < n:
            if self._start < 0 and not self._discarding:
                j = data.find(b"$", i)
                if j < 0:
                    self.noise_bytes += n - i
                    break
                self.noise_bytes += j - i
                self._start = base + j
                self._buf.clear()
                i = j
                self._buf.append(0x24)
                i += 1
                continue
            # inside a line (or discarding an overlong one): look for the next LF or '$'
            k_lf = data.find(b"\n", i)
            k_dl = data.find(b"$", i)
            k = min(x for x in (k_lf, k_dl, n) if x >= 0)
            if self._discarding:
                self.noise_bytes += k - i
                i = k
                if k < n:
                    self._discarding = False
                    if k == k_lf:
                        i += 1
                        self.noise_bytes += 1
                continue
            self._buf += data[i:k]
            if len(self._buf) > self.max_frame:
                frames.append(Frame(bytes(self._buf[:32]), self._start, base + k - 1, "overlong"))
                self.noise_bytes += len(self._buf) - 32
                self._buf.clear()
                self._start = -1
                self._discarding = True
                i = k
                continue
            if k == n:
                break
            if k == k_lf:
                frames.append(Frame(bytes(self._buf), self._start, base + k))
                self._buf.clear()
                self._start = -1
                i = k + 1
            else:  # a '$' before the line ended: the line was cut short
                frames.append(Frame(bytes(self._buf), self._start, base + k - 1, "truncated"))
                self._buf.clear()
                self._start = -1
                i = k
        self.position = base + n
        return frames


# -- sentence syntax ----------------------------------------------------------------------------
_LINE_RE = re.compile(rb"^\$([A-Z][A-Z0-9]{3,})(,[^*$]*)?(?:\*([0-9A-Fa-f]{2}))?$")


def checksum(body: bytes) -> int:
    """XOR of the bytes strictly between ``$`` and ``*``."""
    value = 0
    for b in body:
        value ^= b
    return value


@dataclass(frozen=True, slots=True)
class Sentence:
    """A framed, checksum-verified sentence. ``kind`` is the 3-letter type ("RMC") with the
    talker removed, or the proprietary address ("PUBX04" for ``$PUBX,04``)."""

    talker: str
    kind: str
    fields: tuple[str, ...]
    checksummed: bool
    text: str
    message: Any = None  # the pynmea2 object, when pynmea2 knows the type


def split_sentence(line: bytes) -> Sentence:
    """Check syntax, length and checksum of one line (CR/LF optional) and split it.

    Raises FramingError or ChecksumError. Hex digits must be upper case (ntpd's rule).
    """
    line = line.rstrip(b"\r\n")
    if len(line) > MAX_FRAME:
        raise FramingError(f"line too long ({len(line)} bytes)")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise FramingError("control or 8-bit bytes in line")
    m = _LINE_RE.match(line)
    if m is None:
        raise FramingError("not an NMEA sentence")
    address = m.group(1).decode("ascii")
    body_end = len(line) - 3 if m.group(3) is not None else len(line)
    if body_end - 1 > MAX_BODY and not address.startswith("P"):
        raise FramingError(f"sentence body too long ({body_end - 1} characters)")
    cs = m.group(3)
    if cs is not None:
        if cs != cs.upper():
            raise ChecksumError("lower-case checksum digits")
        if int(cs, 16) != checksum(line[1:body_end]):
            raise ChecksumError(
                f"checksum {cs.decode()} != {checksum(line[1:body_end]):02X}"
            )
    text = line.decode("ascii")
    fields = tuple(m.group(2)[1:].decode("ascii").split(",")) if m.group(2) else ()
    if address.startswith("P"):
        talker = ""
        kind = address + (fields[0] if address == "PUBX" and fields else "")
    else:
        talker, kind = address[:2], address[2:]
    return Sentence(talker, kind, fields, cs is not None, text)


def _field(fields: tuple[str, ...], i: int) -> str:
    return fields[i] if i < len(fields) else ""


# -- time and date fields -----------------------------------------------------------------------
_TIME_RE = re.compile(r"^(\d\d)(\d\d)(\d\d)(?:\.(\d{1,9}))?$")


def parse_time(text: str) -> tuple[int, int, int, int]:
    """``hhmmss[.f]`` to (hour, minute, second, ns). Second 60 is allowed here (leap second);
    whether it is plausible is checked against the date. Raises BadTimeError."""
    m = _TIME_RE.match(text)
    if m is None:
        raise BadTimeError(f"bad time field {text!r}")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3))
    frac = m.group(4) or ""
    ns = int(frac.ljust(9, "0")) if frac else 0
    if h > 23 or mi > 59 or s > 60 or (s == 60 and ns):
        raise BadTimeError(f"impossible time {text!r}")
    return h, mi, s, ns


def _check_date(year: int, month: int, day: int, text: str) -> None:
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise BadDateError(f"impossible date {text!r}")


def parse_ddmmyy(text: str) -> tuple[int, int, int]:
    """RMC/PUBX ``ddmmyy`` to (year, month, day); yy > 80 is 19yy, else 20yy (ntpsec's pivot;
    the rollover guard then moves old dates forward)."""
    if len(text) != 6 or not text.isdigit():
        raise BadDateError(f"bad date field {text!r}")
    d, mo, yy = int(text[:2]), int(text[2:4]), int(text[4:])
    year = 1900 + yy if yy > 80 else 2000 + yy
    _check_date(year, mo, d, text)
    return year, mo, d


def parse_zda_date(day: str, month: str, year: str) -> tuple[int, int, int]:
    text = f"{day},{month},{year}"
    if not (day.isdigit() and month.isdigit() and year.isdigit()) or len(year) != 4:
        raise BadDateError(f"bad ZDA date {text!r}")
    y, mo, d = int(year), int(month), int(day)
    _check_date(y, mo, d, text)
    return y, mo, d


def _is_month_end(year: int, month: int, day: int) -> bool:
    return day == calendar.monthrange(year, month)[1]


def advance_rollover(unix_s: int, pivot_s: int) -> tuple[int, int]:
    """Move a date forward by whole 1024-week epochs until it is no earlier than a day before
    the pivot. Returns (seconds, weeks added). Raises BadDateError for a date more than 1024
    weeks after the pivot, which no receiver can legitimately report."""
    weeks = 0
    while unix_s < pivot_s - DAY_S:
        unix_s += ROLLOVER_S
        weeks += 1024
    if unix_s > pivot_s + ROLLOVER_S:
        raise BadDateError("date more than 1024 weeks after the rollover pivot")
    return unix_s, weeks


# -- decoder output -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TimeCode:
    """The time one sentence reports: Unix ns of the navigation epoch it describes.

    For ``leap_second`` (hh:mm:ss = 23:59:60) ``reference_ns`` is the Unix time of 23:59:59 + 1 s,
    which Unix time cannot tell from the next midnight; the driver makes no sample of it.
    """

    kind: str
    talker: str
    reference_ns: int
    date_source: str  # "sentence", "held" (from a recent dated sentence) or "clock" (rx stamp)
    rollover_weeks: int = 0
    leap_second: bool = False

    @property
    def second(self) -> int:
        return self.reference_ns // NS_PER_S


@dataclass(slots=True)
class LineResult:
    """What one line did: ``outcome`` is "accepted" (a new second: make a sample), "filtered"
    (valid but its second was already used), "leap" (23:59:60), "rejected" (valid syntax, no
    usable time), "malformed", "status" (GSA/GSV/TXT and other known non-timing sentences) or
    "ignored" (unknown or unselected types)."""

    outcome: str
    sentence: Sentence | None = None
    timecode: TimeCode | None = None
    error: NmeaError | None = None


@dataclass(slots=True)
class SatelliteStatus:
    """Receiver diagnostics kept from GSA/GSV/GGA/TXT for ``drivers list`` and ``ntpq -c cv``."""

    fix_type: int | None = None  # GSA: 1 none, 2 2D, 3 3D
    used: dict[str, int] = field(default_factory=dict)  # talker -> satellites used (GSA)
    in_view: dict[str, int] = field(default_factory=dict)  # talker -> satellites in view (GSV)
    snr: dict[str, dict[str, int]] = field(default_factory=dict)  # talker -> PRN -> dB-Hz
    gga_satellites: int | None = None
    gga_quality: int | None = None
    pdop: float | None = None
    antenna: str | None = None  # ANTSTATUS from TXT: OK / OPEN / SHORT
    last_text: str | None = None
    utc_leap_default: bool | None = None  # PUBX,04 leap seconds marked 'D'

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fix_type": self.fix_type,
            "satellites_used": sum(self.used.values()) if self.used else self.gga_satellites,
            "satellites_in_view": sum(self.in_view.values()) if self.in_view else None,
            "gga_quality": self.gga_quality,
            "pdop": self.pdop,
            "antenna": self.antenna,
            "last_text": self.last_text,
        }
        if self.utc_leap_default is not None:
            out["utc_leap_default"] = self.utc_leap_default
        return out


_FIX_KINDS = frozenset({"RMC", "GGA", "GLL", "GNS"})
_STATUS_KINDS = frozenset({"GSA", "GSV", "TXT", "VTG", "GNS"})
_GOOD_MODES = frozenset("ADPRF")

TALLIES = ("received", "accepted", "rejected", "malformed", "filtered")
TimeParser = Callable[["NmeaDecoder", Sentence, "int | None"], TimeCode]


class NmeaDecoder:
    """Stateful sentence decoder: validity, date anchoring, rollover, one sample per second.

    ``feed_line(line, rx_ns)`` takes one framed line and the local receive time (or None in
    replay) and returns a LineResult; it never raises. ``counts`` holds ntpd's tallies
    (received, accepted, rejected, malformed, filtered) and finer counters (bad_checksum, ...).
    """

    def __init__(
        self,
        mode: int = 0,
        pivot_ns: int = DEFAULT_PIVOT_NS,
    ) -> None:
        self.mode = mode
        self.timing = timing_sentences(mode)
        self.date_trust = bool(mode & MODE_DATE_TRUST)
        self.pivot_s = pivot_ns // NS_PER_S
        self.status = SatelliteStatus()
        self.counts: dict[str, int] = dict.fromkeys(TALLIES, 0)
        self._checksummed_kinds: set[str] = set()
        # anchor for date-less sentences: (reference seconds, rx ns or None)
        self._date_anchor: tuple[int, int | None] | None = None
        # latest fix verdict: (time of day in s or None, valid)
        self._last_fix: tuple[int | None, bool] | None = None
        self._last_second: int | None = None
        self._gsa_run = False

    _TIME_PARSERS: ClassVar[dict[str, TimeParser]]

    def _bump(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    # -- public -------------------------------------------------------------------------------
    def feed_line(self, line: bytes, rx_ns: int | None = None) -> LineResult:
        self._bump("received")
        try:
            sentence = self._frame(line)
        except NmeaError as exc:
            return self._fail(exc, None)
        try:
            return self._dispatch(sentence, rx_ns)
        except NmeaError as exc:
            return self._fail(exc, sentence)

    def feed_bad_frame(self, frame: Frame) -> LineResult:
        """Account a frame the framer already found broken (truncated, overlong)."""
        self._bump("received")
        return self._fail(FramingError(f"{frame.problem} line"), None, counter=frame.problem)

    # -- internals ----------------------------------------------------------------------------
    def _fail(
        self, exc: NmeaError, sentence: Sentence | None, counter: str | None = None
    ) -> LineResult:
        self._bump(exc.outcome)
        self._bump(counter or exc.counter)
        return LineResult(exc.outcome, sentence, None, exc)

    def _frame(self, line: bytes) -> Sentence:
        s = split_sentence(line)
        if s.checksummed:
            self._checksummed_kinds.add(s.kind)
        elif s.kind == "RMC":
            raise ChecksumError("RMC without checksum")
        elif s.kind in self._checksummed_kinds:
            raise ChecksumError(f"{s.kind} without checksum after checksummed ones")
        try:
            msg = pynmea2.parse(s.text, check=False)
        except pynmea2.SentenceTypeError:
            msg = None
        except pynmea2.ParseError as exc:
            raise FramingError(f"pynmea2: {exc.args[0][0] if exc.args else exc}") from None
        return Sentence(s.talker, s.kind, s.fields, s.checksummed, s.text, msg)

    def _dispatch(self, s: Sentence, rx_ns: int | None) -> LineResult:
        kind = s.kind
        if kind != "GSA":
            self._gsa_run = False
        if kind in _STATUS_KINDS:
            self._status(s)
        parser = self._TIME_PARSERS.get(kind)
        if parser is None:
            if kind == "GNS":
                self._gns(s)
            if kind in _STATUS_KINDS:
                return LineResult("status", s)
            self._bump("other")
            return LineResult("ignored", s)
        if kind not in self.timing:
            # still parsed: it keeps the fix state and date anchor that selected ones rely on
            self._bump("unselected")
            try:
                tc = parser(self, s, rx_ns)
            except NmeaError as exc:
                return LineResult("ignored", s, None, exc)
            if tc.date_source == "sentence":
                self._date_anchor = (tc.second, rx_ns)
            return LineResult("ignored", s, tc)
        tc = parser(self, s, rx_ns)
        if tc.date_source == "sentence":
            self._date_anchor = (tc.second, rx_ns)
        if self.status.utc_leap_default:
            raise InvalidFixError("receiver UTC not yet valid (leap seconds are the default)")
        if tc.leap_second:
            self._bump("leap_second")
            return LineResult("leap", s, tc)
        sec = tc.second
        last = self._last_second
        if last is not None and last - BACKWARDS_WINDOW_S < sec <= last:
            if sec == last:
                self._bump("filtered")
                return LineResult("filtered", s, tc)
            self._bump("backwards")
            self._bump("rejected")
            return LineResult("rejected", s, tc, InvalidFixError("time went backwards"))
        if last is not None and sec <= last:
            # a jump back by more than the window is not a glitch but a correction (an earlier
            # date-less sentence was anchored to a wrong system clock): follow the receiver
            self._bump("time_jump")
        self._last_second = sec
        self._bump("accepted")
        return LineResult("accepted", s, tc)

    def reset_sequence(self) -> None:
        """Forget the last accepted second (after a reopen, or a deliberate time change)."""
        self._last_second = None

    # time construction
    def _dated(self, s: Sentence, tod: tuple[int, int, int, int], ymd: tuple[int, int, int],
               weeks_known: bool = False) -> TimeCode:
        h, mi, sec, ns = tod
        leap = sec == 60
        if leap and not (h == 23 and mi == 59 and _is_month_end(*ymd)):
            raise BadTimeError("second 60 outside 23:59 on the last day of a month")
        unix_s = calendar.timegm((ymd[0], ymd[1], ymd[2], h, mi, sec, 0, 0, 0))
        weeks = 0
        if not self.date_trust and not weeks_known:
            unix_s, weeks = advance_rollover(unix_s, self.pivot_s)
        if weeks:
            self._bump("rollover_corrected")
        return TimeCode(s.kind, s.talker, unix_s * NS_PER_S + ns, "sentence", weeks, leap)

    def _undated(self, s: Sentence, tod: tuple[int, int, int, int], rx_ns: int | None) -> TimeCode:
        h, mi, sec, ns = tod
        tod_s = h * 3600 + mi * 60 + sec
        source = "held"
        anchor_s: int | None = None
        if self._date_anchor is not None:
            a_sec, a_rx = self._date_anchor
            if a_rx is not None and rx_ns is not None:
                age = (rx_ns - a_rx) // NS_PER_S
                if 0 <= age <= DATE_HOLD_S:
                    anchor_s = a_sec + age
            elif rx_ns is None:
                anchor_s = a_sec
        if anchor_s is None and rx_ns is not None:
            anchor_s, source = rx_ns // NS_PER_S, "clock"
        if anchor_s is None:
            raise NoDateError("no date to anchor a date-less sentence")
        # place the time of day on the day that puts it within 12 h of the anchor
        day0 = anchor_s - anchor_s % DAY_S
        unix_s = day0 + tod_s
        if unix_s - anchor_s > DAY_S // 2:
            unix_s -= DAY_S
        elif anchor_s - unix_s > DAY_S // 2:
            unix_s += DAY_S
        if source == "held" and abs(unix_s - anchor_s) > DATE_HOLD_S:
            if rx_ns is None:
                raise NoDateError("held date too old for this sentence")
            return self._undated_clock(s, tod, rx_ns)
        leap = sec == 60
        if leap:
            y, mo, d = _ymd(unix_s - 1)
            if not (h == 23 and mi == 59 and _is_month_end(y, mo, d)):
                raise BadTimeError("second 60 outside 23:59 on the last day of a month")
        return TimeCode(s.kind, s.talker, unix_s * NS_PER_S + ns, source, 0, leap)

    def _undated_clock(self, s: Sentence, tod: tuple[int, int, int, int], rx_ns: int) -> TimeCode:
        saved = self._date_anchor
        self._date_anchor = None
        try:
            return self._undated(s, tod, rx_ns)
        finally:
            self._date_anchor = saved

    def _note_fix(self, tod: tuple[int, int, int, int] | None, valid: bool) -> None:
        # a fix sentence without a time still tells whether the receiver has a fix now
        tod_s = None if tod is None else tod[0] * 3600 + tod[1] * 60 + tod[2]
        self._last_fix = (tod_s, valid)

    # sentences
    def _rmc(self, s: Sentence, rx_ns: int | None = None) -> TimeCode:
        f = s.fields
        # field 12 (NMEA 4.1 navigational status) is not checked: u-blox always sends "V" there,
        # meaning "no status given", not "invalid".
        status, mode = _field(f, 1), _field(f, 11)
        valid = status == "A" and (not mode or mode in _GOOD_MODES)
        tod = parse_time(_field(f, 0)) if _field(f, 0) else None
        self._note_fix(tod, valid)
        if not valid:
            raise InvalidFixError(f"RMC status {status or '-'} mode {mode or '-'}")
        if tod is None:
            raise BadTimeError("RMC without time")
        return self._dated(s, tod, parse_ddmmyy(_field(f, 8)))

    def _gga(self, s: Sentence, rx_ns: int | None) -> TimeCode:
        f = s.fields
        q = _field(f, 5)
        quality = int(q) if q.isdigit() else 0
        self.status.gga_quality = quality
        n = _field(f, 6)
        self.status.gga_satellites = int(n) if n.isdigit() else None
        valid = 1 <= quality <= 5
        tod = parse_time(_field(f, 0)) if _field(f, 0) else None
        self._note_fix(tod, valid)
        if not valid:
            raise InvalidFixError(f"GGA quality {q or '-'}")
        if tod is None:
            raise BadTimeError("GGA without time")
        return self._undated(s, tod, rx_ns)

    def _gll(self, s: Sentence, rx_ns: int | None) -> TimeCode:
        f = s.fields
        status, mode = _field(f, 5), _field(f, 6)
        valid = status == "A" and (not mode or mode in _GOOD_MODES)
        tod = parse_time(_field(f, 4)) if _field(f, 4) else None
        self._note_fix(tod, valid)
        if not valid:
            raise InvalidFixError(f"GLL status {status or '-'} mode {mode or '-'}")
        if tod is None:
            raise BadTimeError("GLL without time")
        return self._undated(s, tod, rx_ns)

    def _gns(self, s: Sentence) -> None:
        f = s.fields
        modes = _field(f, 5)
        valid = any(c in _GOOD_MODES for c in modes)
        if _field(f, 0):
            try:
                self._note_fix(parse_time(_field(f, 0)), valid)
            except BadTimeError:
                self._note_fix(None, valid)

    def _zda(self, s: Sentence, rx_ns: int | None = None) -> TimeCode:
        f = s.fields
        if not _field(f, 0):
            raise BadTimeError("ZDA without time")
        tod = parse_time(_field(f, 0))
        # ZDA has no validity flag and some receivers send it from their RTC before any fix:
        # trust it only when no fix sentence of (about) the same second said "invalid".
        if self._last_fix is not None:
            fix_tod, fix_valid = self._last_fix
            tod_s = tod[0] * 3600 + tod[1] * 60 + tod[2]
            near = fix_tod is None or min((tod_s - fix_tod) % DAY_S, (fix_tod - tod_s) % DAY_S) <= 2
            if not fix_valid and near:
                raise InvalidFixError("ZDA while the receiver reports no fix")
        ymd = parse_zda_date(_field(f, 1), _field(f, 2), _field(f, 3))
        return self._dated(s, tod, ymd)

    def _pubx04(self, s: Sentence, rx_ns: int | None = None) -> TimeCode:
        f = s.fields  # f[0] == "04"
        leap = _field(f, 5)
        self.status.utc_leap_default = leap.endswith("D")
        tod = parse_time(_field(f, 1))
        ymd = parse_ddmmyy(_field(f, 2))
        week, tow = _field(f, 4), _field(f, 3)
        weeks_known = False
        if week.isdigit() and re.match(r"^\d+(\.\d*)?$", tow):
            # the full UTC week number settles the 1024-week ambiguity outright
            day_s = GPS_EPOCH_S + int(week) * WEEK_S + (int(float(tow)) // DAY_S) * DAY_S
            y, mo, d = _ymd(day_s)
            if (d, mo, y % 100) != (ymd[2], ymd[1], ymd[0] % 100):
                raise BadDateError("PUBX,04 date disagrees with its week number")
            ymd, weeks_known = (y, mo, d), True
        if self.status.utc_leap_default:
            self._bump("utc_unverified")
        return self._dated(s, tod, ymd, weeks_known)

    def _status(self, s: Sentence) -> None:
        f, st = s.fields, self.status
        if s.kind == "GSA":
            ft = _field(f, 1)
            st.fix_type = int(ft) if ft.isdigit() else None
            # multi-GNSS receivers send one GSA per system back to back, often all "GN" and
            # without NMEA 4.11's system id: a run of GSAs is one epoch's set
            if not self._gsa_run:
                st.used.clear()
            self._gsa_run = True
            st.used[f"{s.talker}{len(st.used)}"] = sum(1 for x in f[2:14] if x)
            pd = _field(f, 14)
            try:
                st.pdop = float(pd) if pd else None
            except ValueError:
                st.pdop = None
        elif s.kind == "GSV":
            nv = _field(f, 2)
            if nv.isdigit():
                st.in_view[s.talker] = int(nv)
            if _field(f, 1) == "1":
                st.snr[s.talker] = {}
            table = st.snr.setdefault(s.talker, {})
            for i in range(3, len(f) - 3, 4):
                prn, snr = f[i], f[i + 3]
                if prn and snr.isdigit():
                    table[prn] = int(snr)
        elif s.kind == "TXT":
            text = _field(f, 3)
            st.last_text = text
            if text.startswith("ANTSTATUS="):
                st.antenna = text.split("=", 1)[1]


NmeaDecoder._TIME_PARSERS = {
    "RMC": NmeaDecoder._rmc,
    "GGA": NmeaDecoder._gga,
    "GLL": NmeaDecoder._gll,
    "ZDA": NmeaDecoder._zda,
    "PUBX04": NmeaDecoder._pubx04,
}


def _ymd(unix_s: int) -> tuple[int, int, int]:
    import time as _time

    t = _time.gmtime(unix_s)
    return t.tm_year, t.tm_mon, t.tm_mday


def read_capture(data: bytes) -> bytes:
    """A gpsd-style capture without its ``#`` comment lines (the sentences stay byte-exact)."""
    return b"".join(
        line for line in data.splitlines(keepends=True) if not line.startswith(b"#")
    )


def capture_date_ns(data: bytes) -> int | None:
    """The ``# Date:`` header of a gpsd capture as Unix ns (gpsd pins the century with it)."""
    m = re.search(rb"^#\s*Date\s*[:=]\s*(\d{4})-(\d{1,2})-(\d{1,2})", data, re.M)
    if m is None:
        return None
    y, mo, d = (int(x) for x in m.groups())
    return calendar.timegm((y, mo, d, 0, 0, 0, 0, 0, 0)) * NS_PER_S
