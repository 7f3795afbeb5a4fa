"""Conversions between integer Unix nanoseconds and NTP's fixed-point formats.

Absolute times are integers everywhere in stratum1; this module is the one place that maps them
to and from the wire (64-bit timestamps with era handling, 32-bit short format).
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000
#: Seconds from the NTP prime epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET_S = 2_208_988_800
NTP_ERA_S = 1 << 32
_ERA_NS = NTP_ERA_S * NS_PER_S
_OFFSET_NS = NTP_UNIX_OFFSET_S * NS_PER_S
_MASK64 = (1 << 64) - 1

#: Default pivot for resolving the era of a 64-bit timestamp when the caller has no "now":
#: 2026-01-01T00:00:00Z. Timestamps are mapped into the 136-year window centred on the pivot.
DEFAULT_PIVOT_NS = 1_767_225_600 * NS_PER_S


def ns_to_ntp64(unix_ns: int) -> int:
    """Unix time in integer nanoseconds to a 64-bit NTP timestamp (era folded away), rounded."""
    ntp_ns = unix_ns + _OFFSET_NS
    seconds, rem = divmod(ntp_ns, NS_PER_S)
    frac = ((rem << 32) + NS_PER_S // 2) // NS_PER_S
    return ((seconds << 32) + frac) & _MASK64


def ntp64_to_ns(timestamp: int, pivot_ns: int = DEFAULT_PIVOT_NS) -> int:
    """A 64-bit NTP timestamp to Unix nanoseconds, choosing the era closest to ``pivot_ns``.

    NTP timestamps carry no era number; after 2036-02-07 era 1 begins. Choosing the era that
    puts the result within 68 years of a pivot (normally "now") is RFC 5905's recommendation.
    """
    seconds = timestamp >> 32
    frac = timestamp & 0xFFFFFFFF
    ns_in_era = seconds * NS_PER_S + ((frac * NS_PER_S + (1 << 31)) >> 32)
    pivot_ntp_ns = pivot_ns + _OFFSET_NS
    era = (pivot_ntp_ns - ns_in_era + _ERA_NS // 2) // _ERA_NS
    return ns_in_era + era * _ERA_NS - _OFFSET_NS


def ntp64_diff_seconds(a: int, b: int) -> float:
    """``a - b`` for two 64-bit NTP timestamps, in seconds, modulo the era (±68 years)."""
    d = (a - b) & _MASK64
    if d >= 1 << 63:
        d -= 1 << 64
    return d / (1 << 32)


def seconds_to_short(seconds: float) -> int:
    """A non-negative duration in seconds to NTP short format (16.16), saturating."""
    if seconds <= 0:
        return 0
    value = int(seconds * 65536 + 0.5)
    return min(value, 0xFFFFFFFF)


def short_to_seconds(value: int) -> float:
    """NTP short format (unsigned 16.16) to seconds."""
    return (value & 0xFFFFFFFF) / 65536.0


def log2_to_seconds(exponent: int) -> float:
    """A poll or precision exponent (log2 seconds, signed) to seconds."""
    return 2.0**exponent
