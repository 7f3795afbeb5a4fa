"""ntpd's statistics-line prefix and the clockstats record (the last time code of a refclock)."""

from __future__ import annotations

from ..ntptime import NS_PER_S

#: Modified Julian Day of the Unix epoch.
MJD_UNIX_EPOCH = 40587
_NS_PER_DAY = 86_400 * NS_PER_S


def stats_prefix(unix_ns: int) -> str:
    """``"MJD seconds"``: the day number and seconds past UTC midnight with 3 decimals, as every
    ntpd statistics line starts (e.g. ``"60676 3723.500"``)."""
    day, rest = divmod(unix_ns, _NS_PER_DAY)
    ms = (rest + 500_000) // 1_000_000  # rounded like ntpd's ulfptoa(now, 3)
    return f"{day + MJD_UNIX_EPOCH} {ms // 1000}.{ms % 1000:03d}"


def clockstats_line(unix_ns: int, address: str, timecode: str) -> str:
    """One clockstats line: ``MJD seconds 127.127.t.u timecode`` (no trailing newline).

    Control characters in the time code (a stray CR from a serial line) become spaces so one
    record stays one line.
    """
    text = "".join(c if c.isprintable() else " " for c in timecode).strip()
    return f"{stats_prefix(unix_ns)} {address} {text}"
