"""The NIST/IERS ``leap-seconds.list`` file: parse, verify its ``#h`` SHA-1, report expiry.

Times in the file are NTP seconds (since 1900); an entry's time is the first instant at which
its TAI-UTC applies, i.e. 00:00:00 of the day after the leap second.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass

from .ntptime import NS_PER_S, NTP_UNIX_OFFSET_S

log = logging.getLogger(__name__)

#: ntpsec warns from 28 days before expiry.
EXPIRY_WARNING_DAYS = 28
MAX_FILE_BYTES = 1 << 20


class LeapFileError(ValueError):
    """The file is not a usable leap-seconds list (the message says why and where)."""


@dataclass(frozen=True, slots=True)
class LeapEntry:
    ntp_seconds: int  # first instant at which tai_offset applies
    tai_offset: int  # TAI - UTC from then on

    @property
    def unix_ns(self) -> int:
        return (self.ntp_seconds - NTP_UNIX_OFFSET_S) * NS_PER_S


@dataclass(frozen=True, slots=True)
class LeapTable:
    entries: tuple[LeapEntry, ...]
    updated_ntp: int | None
    expires_ntp: int | None
    hash_verified: bool  # False: the file had no #h line (accepted, as ntpsec does)

    @property
    def expires_ns(self) -> int | None:
        if self.expires_ntp is None:
            return None
        return (self.expires_ntp - NTP_UNIX_OFFSET_S) * NS_PER_S

    def expired(self, now_ns: int) -> bool:
        exp = self.expires_ns
        return exp is not None and now_ns >= exp

    def tai_offset(self, now_ns: int) -> int | None:
        """TAI - UTC at ``now_ns`` (None before the table starts)."""
        current = None
        for e in self.entries:
            if e.unix_ns <= now_ns:
                current = e.tai_offset
            else:
                break
        return current

    def next_leap(self, now_ns: int) -> tuple[int, int] | None:
        """(Unix ns of the leap instant, +1 insert / -1 delete) for the first leap after now."""
        prev = None
        for e in self.entries:
            if e.unix_ns > now_ns and prev is not None and e.tai_offset != prev.tai_offset:
                return e.unix_ns, 1 if e.tai_offset > prev.tai_offset else -1
            prev = e
        return None

    def expiry_message(self, now_ns: int) -> tuple[str, str] | None:
        """("warning"|"error", text) when the file expires within 28 days or has expired."""
        exp = self.expires_ns
        if exp is None:
            return ("warning", "leap file has no expiry date (#@ line)")
        days = (exp - now_ns) / (86400 * NS_PER_S)
        if days <= 0:
            return ("error", f"leap file expired {int(-days)} days ago")
        if days < EXPIRY_WARNING_DAYS:
            return ("warning", f"leap file will expire in less than {math.ceil(days)} days")
        return None


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit() and ch.isascii())


def parse_leapfile(text: str, name: str = "leapfile") -> LeapTable:
    """Parse and verify; raises LeapFileError naming ``name:line`` on anything wrong."""
    hashed: list[str] = []
    entries: list[LeapEntry] = []
    updated = expires = None
    stated: bytes | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{name}:{lineno}"
        if not line:
            continue
        if line.startswith("#$"):
            updated = _int_field(line[2:], where, "#$ (last update)")
            hashed.append(_digits(line[2:]))
        elif line.startswith("#@"):
            expires = _int_field(line[2:], where, "#@ (expiry)")
            hashed.append(_digits(line[2:]))
        elif line.startswith("#h"):
            words = line[2:].split()
            try:
                if len(words) != 5:
                    raise ValueError
                values = [int(w, 16) for w in words]
                if any(v < 0 or v > 0xFFFFFFFF for v in values):
                    raise ValueError
            except ValueError:
                raise LeapFileError(f"{where}: malformed #h hash line") from None
            stated = b"".join(v.to_bytes(4, "big") for v in values)
        elif line.startswith("#"):
            continue
        elif line[0].isdigit():
            data = line.split("#", 1)[0]
            fields = data.split()
            if len(fields) < 2:
                raise LeapFileError(f"{where}: data line needs NTP seconds and TAI-UTC")
            try:
                secs, tai = int(fields[0]), int(fields[1])
            except ValueError:
                raise LeapFileError(f"{where}: data line is not two integers") from None
            if entries and secs <= entries[-1].ntp_seconds:
                raise LeapFileError(f"{where}: times not ascending")
            entries.append(LeapEntry(secs, tai))
            hashed.append(_digits(data))
        else:
            raise LeapFileError(f"{where}: unrecognised line {line[:40]!r}")
    if not entries:
        raise LeapFileError(f"{name}: no leap second entries")
    if stated is None:
        log.error("%s: no hash signature (#h): accepted without verification", name)
    else:
        digest = hashlib.sha1("".join(hashed).encode("ascii")).digest()
        if digest != stated:
            raise LeapFileError(f"{name}: signature mismatch (#h does not match the contents)")
    return LeapTable(tuple(entries), updated, expires, stated is not None)


def _int_field(text: str, where: str, what: str) -> int:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        raise LeapFileError(f"{where}: {what} is not an integer") from None


def load_leapfile(path: str | os.PathLike[str]) -> LeapTable:
    """Read and parse ``path`` (OSError and LeapFileError propagate: the caller keeps the old)."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise LeapFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise LeapFileError(f"{path}: not ASCII text") from None
    return parse_leapfile(text, os.fspath(path))


def format_leapfile(
    entries: list[tuple[int, int]], *, updated: int, expires: int, with_hash: bool = True
) -> str:
    """Write a table in the NIST format with its #h hash (for tests, the simulator, tooling)."""
    lines = [f"#$\t{updated}", f"#@\t{expires}", "#"]
    hashed = [str(updated), str(expires)]
    for secs, tai in entries:
        lines.append(f"{secs}\t{tai}\t# entry")
        hashed.append(f"{secs}{tai}")
    if with_hash:
        d = hashlib.sha1("".join(hashed).encode("ascii")).digest()
        words = " ".join(f"{int.from_bytes(d[i : i + 4], 'big'):x}" for i in range(0, 20, 4))
        lines.append(f"#h\t{words}")
    return "\n".join(lines) + "\n"
