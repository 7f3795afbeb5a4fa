"""The packet counters ntpq's ``sysstats`` reads (``ss_*``): running totals since start and
counts since the last hourly reset, as ntpsec keeps them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NS_PER_S = 1_000_000_000
#: ntpd resets the "recent" set of counters every hour.
RESET_INTERVAL_S = 3600

#: ss_* name -> how it is counted from the server's and access control's counters.
COUNTERS: dict[str, Callable[[Mapping[str, int]], int]] = {
    "received": lambda c: c.get("received", 0),
    "thisver": lambda c: c.get("new_version", 0),
    "oldver": lambda c: c.get("old_version", 0),
    "ver1": lambda c: c.get("ver1", 0),
    "ver1client": lambda c: c.get("ver1_client", 0),
    "ver1zero": lambda c: c.get("ver1_zero", 0),
    "ver1symm": lambda c: c.get("ver1_symm", 0),
    "badformat": lambda c: c.get("malformed", 0) + c.get("bad_version", 0),
    "badauth": lambda c: c.get("bad_auth", 0) + c.get("crypto_naks", 0),
    "declined": lambda c: c.get("mode7", 0) + c.get("not_a_request", 0) + c.get("oversize", 0),
    "restricted": lambda c: c.get("restricted", 0),
    "limited": lambda c: c.get("limited", 0),
    "kodsent": lambda c: c.get("kod_sent", 0),
    "processed": lambda c: c.get("replied", 0) + c.get("peer", 0) - c.get("kod_sent", 0),
}


def server_counters(servers: Iterable[Any], access: Any = None) -> dict[str, int]:
    """The counters of every open NtpServer added up, with the access control's ``limited``."""
    total: dict[str, int] = {}
    for server in servers:
        stats = getattr(server, "stats", None)
        values = stats.as_dict() if hasattr(stats, "as_dict") else {}
        for key, value in values.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    access_stats = getattr(access, "stats", None)
    limited = getattr(access_stats, "limited", None)
    if isinstance(limited, int):
        total["limited"] = limited
    return total


@dataclass
class SysStats:
    """Totals since ``started_ns`` and the same counts since the last hourly reset.

    ``tick`` (from the daemon's housekeeping) moves the reset point once an hour has passed;
    counters are read from a callable so nothing is counted twice.
    """

    started_ns: int
    read_counters: Callable[[], Mapping[str, int]]
    reset_ns: int = field(init=False)
    _base: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.reset_ns = self.started_ns

    def tick(self, now_ns: int) -> None:
        if now_ns - self.reset_ns >= RESET_INTERVAL_S * NS_PER_S:
            self._base = self._values(self.read_counters())
            self.reset_ns = now_ns

    @staticmethod
    def _values(counters: Mapping[str, int]) -> dict[str, int]:
        return {name: count(counters) for name, count in COUNTERS.items()}

    def variables(self, now_ns: int, control_requests: int = 0) -> list[tuple[str, str]]:
        """``ss_uptime``, ``ss_numctlreq``, and every ``ss_X`` (this hour) with ``ss_X_r``
        (since start), as ntpsec's ntpq asks for them."""
        totals = self._values(self.read_counters())
        uptime = max(0, now_ns - self.started_ns) // NS_PER_S
        since_reset = max(0, now_ns - self.reset_ns) // NS_PER_S
        out = [
            ("ss_uptime", str(uptime)),
            ("ss_numctlreq", str(control_requests)),
            ("ss_reset", str(since_reset)),
            ("ss_reset_r", str(uptime)),
        ]
        for name, total in totals.items():
            out.append((f"ss_{name}", str(max(0, total - self._base.get(name, 0)))))
            out.append((f"ss_{name}_r", str(total)))
        return out


__all__ = ["COUNTERS", "RESET_INTERVAL_S", "SysStats", "server_counters"]
