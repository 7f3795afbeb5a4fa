"""The frequency (drift) file: ntpd's one-number ``ntp.drift``, read at start, written hourly.

Writes go to a temporary file in the same directory that is then renamed over the old one, so
a crash never leaves a torn file; a corrupt file is reported and ignored, never trusted and
never truncated.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from .atomicfile import write_atomically
from .ntptime import NS_PER_S

log = logging.getLogger(__name__)

#: ntpd's limit: a value beyond the kernel's range is not a frequency.
MAX_PPM = 500.0
#: ntpd writes "at intervals of an hour or more".
WRITE_INTERVAL_S = 3600.0
#: Changes smaller than this (PPM) are not worth a write (flash wear on a Pi's SD card).
MIN_CHANGE_PPM = 0.001


class DriftFileError(ValueError):
    """The drift file exists but does not hold one plausible frequency."""


def parse_drift(text: str) -> float:
    """The frequency (PPM) in a drift file's text; raises DriftFileError when it is not one."""
    fields = text.split()
    if not fields:
        raise DriftFileError("empty")
    # ntpsec appends nothing; some tools write "freq [stability]": take the first number.
    if len(fields) > 2:
        raise DriftFileError(f"expected one number, found {len(fields)} fields")
    try:
        ppm = float(fields[0])
    except ValueError:
        raise DriftFileError(f"not a number: {fields[0][:40]!r}") from None
    if not math.isfinite(ppm) or abs(ppm) > MAX_PPM:
        raise DriftFileError(f"frequency {fields[0][:40]} PPM is outside ±{MAX_PPM:g} PPM")
    return ppm


def read_drift(path: str | os.PathLike[str]) -> float | None:
    """The stored frequency, or None when the file is absent or corrupt (with a warning)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        log.info("drift file %s does not exist: measuring the frequency", path)
        return None
    except OSError as exc:
        log.warning("drift file %s cannot be read (%s): ignored", path, exc)
        return None
    try:
        return parse_drift(data.decode("ascii"))
    except (UnicodeDecodeError, DriftFileError) as exc:
        log.warning("drift file %s is corrupt (%s): ignored, left as it is", path, exc)
        return None


def write_drift(path: str | os.PathLike[str], ppm: float) -> None:
    """Write ``ppm`` atomically: temporary file in the same directory, fsync, rename."""
    if not math.isfinite(ppm):
        raise ValueError("frequency must be finite")
    ppm = max(-MAX_PPM, min(MAX_PPM, ppm))
    write_atomically(path, f"{ppm:.3f}\n")


class DriftFile:
    """When to write: hourly, only when the loop's frequency is known and has changed."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval_s: float = WRITE_INTERVAL_S,
        max_sigma_ppm: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.max_sigma_ppm = max_sigma_ppm
        self._last_write_ns: int | None = None
        self._started_ns: int | None = None
        self.written: float | None = None
        self.errors = 0

    def load(self) -> float | None:
        value = read_drift(self.path)
        self.written = value
        return value

    def due(self, now_ns: int) -> bool:
        if self._started_ns is None:
            self._started_ns = now_ns
        since = self._last_write_ns if self._last_write_ns is not None else self._started_ns
        return (now_ns - since) / NS_PER_S >= self.interval_s

    def maybe_write(self, ppm: float, now_ns: int, *, sigma_ppm: float = 0.0) -> bool:
        """Write when due and worth it; returns True when the file was written."""
        if not self.due(now_ns) or sigma_ppm > self.max_sigma_ppm:
            return False
        self._last_write_ns = now_ns
        if self.written is not None and abs(ppm - self.written) < MIN_CHANGE_PPM:
            return False
        try:
            write_drift(self.path, ppm)
        except OSError as exc:
            self.errors += 1
            log.warning("cannot write drift file %s: %s", self.path, exc)
            return False
        self.written = ppm
        return True
