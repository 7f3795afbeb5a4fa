"""``ntpq -c mrulist``: the nonce request and the MRU-list reads over mode 6, answered from the
server's per-client table (most recently used first seen, last seen, count, mode, restrictions).

The nonce ties an MRU read to an address that has just received our reply, so a spoofed source
address cannot make us send the (large) list to a third party.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from .control import (
    ERR_BADVALUE,
    ERR_UNKNOWNVAR,
    MAX_DATA,
    ControlError,
    format_items,
    parse_varlist,
)
from .controlvars import fmt_timestamp
from .ntptime import NS_PER_S

#: ntpq asks for a new nonce after this many seconds; a nonce older than that is refused.
NONCE_TIMEOUT_S = 16
#: Rows in one answer when the request names no limit (ntpd caps ``limit`` the same way).
MAX_ROWS = 256

Address = tuple


class MruEntryLike(Protocol):
    """One client in the MRU table (``stratum1.ratelimit`` entries, or ``MruEntry``)."""

    address: str
    port: int
    first_ns: int  # Unix ns
    last_ns: int  # Unix ns
    count: int
    mode: int
    version: int
    flags: int  # ntpd RES_* flags that applied to it (ntpq's rs)


@dataclass(frozen=True, slots=True)
class MruEntry:
    address: str
    port: int
    first_ns: int
    last_ns: int
    count: int
    mode: int = 3
    version: int = 4
    flags: int = 0


def _addr_text(address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class MruList:
    """The ``MruResponder`` for ``stratum1.control.Control``.

    ``entries()`` returns the MRU table in any order; ``now_ns()`` is the wall clock (Unix ns)
    for the ``now=`` sentinel; ``monotonic_ns()`` ages nonces.
    """

    def __init__(
        self,
        entries: Callable[[], Iterable[MruEntryLike]],
        now_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        secret: bytes | None = None,
    ) -> None:
        self.entries = entries
        self.now_ns = now_ns
        self.monotonic_ns = monotonic_ns
        self._secret = secret or os.urandom(32)

    # -- nonces ---------------------------------------------------------------------------------
    def _tag(self, stamp: int, address: Address) -> int:
        msg = f"{stamp}|{address[0]}".encode()
        return int.from_bytes(hmac.new(self._secret, msg, hashlib.sha256).digest()[:8], "big")

    def make_nonce(self, address: Address) -> str:
        stamp = (self.monotonic_ns() // NS_PER_S) & 0xFFFFFFFF
        return f"{stamp:08x}{self._tag(stamp, address):016x}"

    def nonce_valid(self, nonce: str, address: Address) -> bool:
        if len(nonce) != 24:
            return False
        try:
            stamp, tag = int(nonce[:8], 16), int(nonce[8:], 16)
        except ValueError:
            return False
        age = ((self.monotonic_ns() // NS_PER_S) - stamp) & 0xFFFFFFFF
        return age <= NONCE_TIMEOUT_S and hmac.compare_digest(
            tag.to_bytes(8, "big"), self._tag(stamp, address).to_bytes(8, "big"))

    def nonce(self, address: Address) -> bytes:
        return f"nonce={self.make_nonce(address)}\r\n".encode()

    # -- MRU reads ------------------------------------------------------------------------------
    def read_mru(self, payload: bytes, address: Address, max_bytes: int) -> bytes:
        """The answer to one READ_MRU request (raises ControlError for a bad or stale nonce,
        bad parameter values, or a continuation point no longer in the table)."""
        params: dict[str, str] = {}
        for name, value in parse_varlist(payload):
            params[name] = (value or "").strip('"')
        if not self.nonce_valid(params.get("nonce", ""), address):
            raise ControlError(ERR_BADVALUE, "missing, stale or foreign nonce")
        try:
            frags = int(params.get("frags", "0"), 0)
            limit = int(params.get("limit", "0"), 0)
            mincount = int(params.get("mincount", "0"), 0)
            resall = int(params.get("resall", "0"), 0)
            resany = int(params.get("resany", "0"), 0)
            maxlstint = int(params.get("maxlstint", "0"), 0)
            minlstint = int(params.get("minlstint", "0"), 0)
            recent = int(params.get("recent", "0"), 0)
        except ValueError:
            raise ControlError(ERR_BADVALUE, "MRU parameter is not a number") from None
        budget = max_bytes if frags <= 0 else min(max_bytes, frags * MAX_DATA)
        rows = MAX_ROWS if limit <= 0 else min(limit, MAX_ROWS)
        now = self.now_ns()

        table = sorted(self.entries(), key=lambda e: (e.last_ns, e.address, e.port))
        if recent > 0:
            table = table[-recent:]
        start = self._continue_after(table, params)
        chosen = []
        for e in table[start:]:
            age_s = (now - e.last_ns) // NS_PER_S
            if e.count < mincount or (maxlstint and age_s > maxlstint) or (
                    minlstint and age_s < minlstint):
                continue
            if (e.flags & resall) != resall or (resany and not e.flags & resany):
                continue
            chosen.append(e)

        head = [("nonce", self.make_nonce(address))]
        items: list[tuple[str, str]] = list(head)
        complete = True
        for i, e in enumerate(chosen):
            row = [
                (f"addr.{i}", _addr_text(e.address, e.port)),
                (f"last.{i}", fmt_timestamp(e.last_ns)),
                (f"first.{i}", fmt_timestamp(e.first_ns)),
                (f"ct.{i}", str(e.count)),
                (f"mv.{i}", str(((e.version & 7) << 3) | (e.mode & 7))),
                (f"rs.{i}", f"0x{e.flags:x}"),
            ]
            # Room for this row and the closing now=/last.newest= pair.
            if i >= rows or len(format_items(items + row)) + 80 > budget:
                complete = False
                break
            items += row
        if complete:
            newest = table[-1].last_ns if table else 0
            items += [("now", fmt_timestamp(now)), ("last.newest", fmt_timestamp(newest))]
        return format_items(items)

    @staticmethod
    def _continue_after(table: list[MruEntryLike], params: dict[str, str]) -> int:
        """Index after the newest entry the client already has (``addr.N``/``last.N``)."""
        marks = sorted(int(k[5:]) for k in params if k.startswith("addr.") and k[5:].isdigit())
        if not marks:
            return 0
        positions = {(_addr_text(e.address, e.port), fmt_timestamp(e.last_ns)): n
                     for n, e in enumerate(table)}
        for i in marks:
            found = positions.get((params[f"addr.{i}"], params.get(f"last.{i}", "")))
            if found is not None:
                return found + 1
        raise ControlError(ERR_UNKNOWNVAR, "none of the client's entries is still in the table")


__all__ = ["NONCE_TIMEOUT_S", "MruEntry", "MruEntryLike", "MruList"]
