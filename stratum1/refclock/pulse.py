"""Numbering PPS pulses: which whole second an edge marks, from an estimate of true time."""

from __future__ import annotations

from ..ntptime import NS_PER_S

#: An edge farther than this from every whole second cannot be numbered (ntpd's and chrony's
#: 0.4 s rule: the estimate might belong to the neighbouring second).
MAX_PULSE_ERROR_NS = 400_000_000


def nearest_second(estimate_ns: int, max_error_ns: int = MAX_PULSE_ERROR_NS) -> int | None:
    """The whole second (Unix ns) nearest ``estimate_ns``, or None when it is ambiguous.

    ``estimate_ns`` is the best guess of the true time of a pulse (its local timestamp plus the
    offset known from a paired time code or a synchronised clock).
    """
    second = (estimate_ns + NS_PER_S // 2) // NS_PER_S * NS_PER_S
    if abs(estimate_ns - second) > max_error_ns:
        return None
    return second
