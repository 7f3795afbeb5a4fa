"""``stratum1 status`` (is this server good? exit codes like ntpstat's) and ``stratum1 peers``
(``ntpq -p``), both read from the running daemon over mode 6."""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .control import (
    ERR_UNKNOWNVAR,
    FLAG_ERROR,
    FLAG_MORE,
    FLAG_RESPONSE,
    HEADER,
    HEADER_LEN,
    MAX_FRAGMENTS,
    MODE_CONTROL,
    OP_READCLOCK,
    OP_READSTAT,
    OP_READVAR,
    OPCODE_MASK,
    parse_varlist,
)
from .ntptime import NTP_UNIX_OFFSET_S
from .query import split_hostport

EXIT_SYNCHRONISED = 0
EXIT_UNSYNCHRONISED = 1
EXIT_UNKNOWN = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 123
REQUEST_VERSION = 2  # what ntpq sends
TALLY = " x.-+#*o"
SELECTION = ("reject", "falsetick", "excess", "outlier", "candidate", "backup", "sys.peer",
             "pps.peer")
ERROR_TEXT = {0: "unspecified", 1: "permission denied", 2: "bad format", 3: "unknown opcode",
              4: "unknown association", 5: "unknown variable", 6: "bad value",
              7: "administratively prohibited"}


class Mode6Error(Exception):
    """The server answered a request with a mode-6 error code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"server error {code} ({ERROR_TEXT.get(code, '?')})")
        self.code = code


# -- a small mode-6 client ---------------------------------------------------------------------


def encode_request(opcode: int, sequence: int, assoc_id: int = 0, payload: bytes = b"") -> bytes:
    """One mode-6 request (no MAC), payload padded to a multiple of 4."""
    lvm = (REQUEST_VERSION << 3) | MODE_CONTROL
    body = HEADER.pack(lvm, opcode & OPCODE_MASK, sequence, 0, assoc_id, 0, len(payload))
    body += payload
    return body + bytes(-len(body) % 4)


@dataclass
class Reply:
    status: int
    data: bytes


class Reassembly:
    """The fragments of one response, in any order, until the last one and no gaps."""

    def __init__(self, opcode: int, sequence: int) -> None:
        self.opcode = opcode
        self.sequence = sequence
        self.parts: dict[int, bytes] = {}
        self.end: int | None = None
        self.status = 0

    def add(self, datagram: bytes) -> Reply | None:
        """Take one datagram; the whole reply once complete. Stray datagrams are ignored;
        an error response raises Mode6Error."""
        if len(datagram) < HEADER_LEN:
            return None
        lvm, rem_op, seq, status, _assoc, offset, count = HEADER.unpack_from(datagram)
        if lvm & 7 != MODE_CONTROL or not rem_op & FLAG_RESPONSE or seq != self.sequence:
            return None
        if rem_op & OPCODE_MASK != self.opcode:
            return None
        if rem_op & FLAG_ERROR:
            raise Mode6Error((status >> 8) & 0xFF)
        self.status = status
        self.parts[offset] = bytes(datagram[HEADER_LEN:HEADER_LEN + count])
        if not rem_op & FLAG_MORE:
            self.end = offset + count
        if len(self.parts) > MAX_FRAGMENTS:
            raise Mode6Error(2)
        if self.end is None:
            return None
        data = b""
        while len(data) < self.end:
            part = self.parts.get(len(data))
            if part is None:
                return None  # a fragment is still missing
            if not part:
                break
            data += part
        return Reply(self.status, data[: self.end])


class ControlClient:
    """Mode-6 queries to one server (what ntpq does for ``rv``, ``as``, ``cv``)."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 timeout: float = 2.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self._seq = itertools.count(os.getpid() & 0x7FFF or 1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, opcode: int, assoc_id: int = 0, payload: bytes = b"") -> Reply:
        sequence = next(self._seq) & 0xFFFF
        self.sock.sendto(encode_request(opcode, sequence, assoc_id, payload), self.address)
        pending = Reassembly(opcode, sequence)
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_FRAGMENTS * 4):  # bounded: stray datagrams cannot keep us here
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                break
            reply = pending.add(datagram)
            if reply is not None:
                return reply
        raise TimeoutError(f"no answer from {self.address[0]}:{self.address[1]}")

    def read_variables(self, assoc_id: int = 0, names: Sequence[str] = ()) -> dict[str, str]:
        """READVAR: system variables (assoc 0) or one association's."""
        reply = self.request(OP_READVAR, assoc_id, ",".join(names).encode("ascii"))
        return parse_values(reply.data)

    def read_clock(self, assoc_id: int) -> dict[str, str]:
        return parse_values(self.request(OP_READCLOCK, assoc_id).data)

    def associations(self) -> list[tuple[int, int]]:
        """READSTAT: (association id, peer status word) pairs."""
        data = self.request(OP_READSTAT).data
        return [struct.unpack_from("!HH", data, i) for i in range(0, len(data) - 3, 4)]


def parse_values(data: bytes) -> dict[str, str]:
    """ntpd's ``name=value, ...`` text to a dict; quotes around strings are removed."""
    out: dict[str, str] = {}
    for name, value in parse_varlist(data.replace(b"\r\n", b" ").replace(b"\n", b" ")):
        v = value or ""
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        out[name] = v
    return out


# -- what the screens show ---------------------------------------------------------------------


@dataclass
class Peer:
    assoc_id: int
    status: int
    variables: Mapping[str, str]

    @property
    def selection(self) -> int:
        return (self.status >> 8) & 7

    @property
    def tally(self) -> str:
        return TALLY[self.selection]

    @property
    def name(self) -> str:
        return self.variables.get("srchost") or self.variables.get("srcadr", "?")

    @property
    def address(self) -> str:
        return self.variables.get("srcadr", "")

    @property
    def is_refclock(self) -> bool:
        return self.address.startswith("127.127.")

    @property
    def is_pps(self) -> bool:
        v = self.variables
        return (self.address.startswith("127.127.22.") or v.get("refid", "").strip(".") == "PPS"
                or v.get("srchost", "").upper().startswith("PPS"))


@dataclass
class ServerView:
    system: Mapping[str, str]
    peers: list[Peer]
    uptime: int | None = None


def fetch(client: ControlClient) -> ServerView:
    """Everything both screens need: system variables, the association list, each peer."""
    system = client.read_variables()
    peers = []
    for assoc_id, status in client.associations():
        try:
            peers.append(Peer(assoc_id, status, client.read_variables(assoc_id)))
        except Mode6Error:
            continue  # gone between the list and the read
    uptime = None
    try:
        value = client.read_variables(0, ["ss_uptime"]).get("ss_uptime")
        uptime = int(value) if value and value.isdigit() else None
    except Mode6Error as exc:
        if exc.code != ERR_UNKNOWNVAR:
            raise
    return ServerView(system, peers, uptime)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value, 0) if value is not None else default
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def synchronised(system: Mapping[str, str]) -> bool:
    """ntpstat's test: a leap indicator other than 3 and a stratum below 16."""
    return _int(system.get("leap"), 3) != 3 and _int(system.get("stratum"), 16) < 16


def _ntp_to_unix(stamp: str | None) -> float | None:
    """``0xSSSSSSSS.FFFFFFFF`` to Unix seconds; None for the zero timestamp or junk."""
    if not stamp or not stamp.startswith("0x"):
        return None
    whole, _, frac = stamp[2:].partition(".")
    try:
        seconds = int(whole, 16)
        fraction = int(frac or "0", 16) / 2**32
    except ValueError:
        return None
    if seconds == 0:
        return None
    unix = seconds - NTP_UNIX_OFFSET_S + fraction
    if unix < 0:  # era 1 (after 2036)
        unix += 2**32
    return unix


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


def _ms(value: str | None, signed: bool = True) -> str:
    """A mode-6 value in milliseconds, shown in us below 1 ms (PPS offsets are microseconds)."""
    f = _float(value)
    if f is None:
        return "?"
    number, unit = (f * 1e3, "us") if abs(f) < 1 else (f, "ms")
    return f"{number:+.3f} {unit}" if signed else f"{number:.3f} {unit}"


def _pps_line(peers: Sequence[Peer]) -> str:
    chosen = [p for p in peers if p.selection == 7]
    if chosen:
        return f"in use: {chosen[0].name} is the PPS peer (o)"
    pps = [p for p in peers if p.is_pps]
    if not pps:
        return "none configured"
    p = pps[0]
    reach = _int(p.variables.get("reach"), 0)
    if reach == 0:
        return f"{p.name}: no pulses yet (reach 0)"
    return (f"{p.name}: pulses arrive (reach {reach:o}) but not used ({SELECTION[p.selection]}):"
            " it needs a selected prefer source within 128 ms to number its seconds")


def _leap_line(system: Mapping[str, str]) -> str:
    leap = _int(system.get("leap"), 3)
    text = {0: "none pending", 1: "insertion armed (23:59:60 at the end of this month)",
            2: "deletion armed (23:59:59 skipped at the end of this month)",
            3: "unknown (not synchronised)"}[leap & 3]
    extras = []
    if system.get("leapsec"):
        extras.append(f"last/next in table {system['leapsec']}")
    if system.get("expire"):
        extras.append(f"leap file expires {system['expire']}")
    if system.get("tai"):
        extras.append(f"TAI-UTC {system['tai']} s")
    return text + (f" ({'; '.join(extras)})" if extras else "")


def render_status(view: ServerView, where: str) -> str:
    """The one screen: synchronised or not, to what, offset/jitter, PPS, leap, drift, uptime."""
    s = view.system
    peer_id = _int(s.get("peer"), 0)
    sys_peer = next((p for p in view.peers if p.assoc_id == peer_id), None)
    stratum = _int(s.get("stratum"), 16)
    lines = [f"stratum1 at {where}: {s.get('version', 'unknown version')}"]
    if synchronised(s):
        source = sys_peer.name if sys_peer else s.get("refid", "?")
        if sys_peer is not None and sys_peer.address and sys_peer.address != sys_peer.name:
            source += f" ({sys_peer.address})"
        lines.append(f"  state     synchronised to {source}, stratum {stratum},"
                     f" refid {s.get('refid', '?')}")
    else:
        reachable = [p for p in view.peers if _int(p.variables.get("reach"), 0)]
        why = ("no source has answered yet (reach 0 everywhere)" if not reachable
               else f"{len(reachable)} source(s) reachable, none selected yet")
        lines.append(f"  state     NOT synchronised: {why}")
    lines.append(f"  offset    {_ms(s.get('offset'))}, jitter {_ms(s.get('sys_jitter'), False)}"
                 f" (root delay {_ms(s.get('rootdelay'), False)},"
                 f" dispersion {_ms(s.get('rootdisp'), False)})")
    lines.append(f"  PPS       {_pps_line(view.peers)}")
    lines.append(f"  leap      {_leap_line(s)}")
    freq = _float(s.get("frequency"))
    wander = _float(s.get("clk_wander"))
    drift = "?" if freq is None else f"{freq:+.3f} PPM"
    if wander is not None:
        drift += f" (wander {wander:.3f} PPM)"
    lines.append(f"  drift     {drift}, poll {2 ** _int(s.get('tc'), 6)} s")
    uptime = "unknown" if view.uptime is None else format_duration(view.uptime)
    lines.append(f"  uptime    {uptime}")
    lines.append(f"  sources   {len(view.peers)} configured: "
                 + (" ".join(f"{p.tally.strip() or '_'}{p.name}" for p in view.peers) or "none"))
    return "\n".join(lines)


def _when(seconds: float | None) -> str:
    """ntpq's ``when``: seconds, then minutes, hours, days."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s <= 2048:
        return str(s)
    if s <= 300 * 60:
        return f"{s // 60}m"
    if s <= 96 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _ptype(p: Peer) -> str:
    if p.is_refclock:
        return "l"
    return {1: "s", 2: "s", 5: "b"}.get(_int(p.variables.get("hmode"), 3), "u")


def _refid(p: Peer) -> str:
    """ntpsec ntpq's rule: a refid that is not an address is shown between dots."""
    refid = p.variables.get("refid", "")
    if refid and "." not in refid and ":" not in refid:
        return f".{refid}."
    return refid


PEERS_HEADER = ("     remote           refid      st t when poll reach   delay   offset  jitter\n"
                + "=" * 78)


def render_peers(view: ServerView, now: float | None = None) -> str:
    """``ntpq -p``: one line per association, tally code first."""
    clock = _ntp_to_unix(view.system.get("clock")) or (now if now is not None else time.time())
    rows = [PEERS_HEADER]
    for p in sorted(view.peers, key=lambda p: p.assoc_id):
        v = p.variables
        rec = _ntp_to_unix(v.get("rec"))
        when = _when(clock - rec if rec is not None else None)
        poll = 2 ** _int(v.get("hpoll"), 6)
        reach = _int(v.get("reach"), 0)
        delay, offset, jitter = (_float(v.get(k)) or 0.0 for k in ("delay", "offset", "jitter"))
        rows.append(f"{p.tally}{p.name:<15.15} {_refid(p):<15.15} {_int(v.get('stratum'), 16):2d}"
                    f" {_ptype(p)} {when:>4} {poll:>4}  {reach:3o} {delay:8.3f} {offset:8.3f}"
                    f" {jitter:7.3f}")
    return "\n".join(rows)


# -- commands ----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``stratum1 status`` and ``stratum1 peers``."""
    p.add_argument("host", nargs="?", default=DEFAULT_HOST,
                   help=f"server to ask, HOST or HOST:PORT (default {DEFAULT_HOST}:{DEFAULT_PORT})")
    p.add_argument("-p", "--port", type=int, default=None, help="mode-6 port (default 123)")
    p.add_argument("-t", "--timeout", type=float, default=2.0, help="seconds to wait for answers")


def _split_host(host: str, port: int | None) -> tuple[str, int]:
    h, p = split_hostport(host, DEFAULT_PORT)
    return h, port or p


def _query(args: argparse.Namespace) -> tuple[ServerView | None, str]:
    try:
        host, port = _split_host(args.host, args.port)
    except ValueError:
        print(f"stratum1: bad server {args.host!r}: expected HOST or HOST:PORT", file=sys.stderr)
        return None, args.host
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with ControlClient(host, port, args.timeout) as client:
            return fetch(client), where
    except TimeoutError:
        print(f"stratum1: no answer from {where}: is the daemon running, and does `restrict`"
              " allow queries from here?", file=sys.stderr)
    except Mode6Error as exc:
        print(f"stratum1: {where} refused the query: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"stratum1: cannot query {where}: {exc.strerror or exc}", file=sys.stderr)
    return None, where


def main_status(args: argparse.Namespace) -> int:
    """``stratum1 status``: 0 synchronised, 1 not synchronised, 2 state unknown (ntpstat's)."""
    view, where = _query(args)
    if view is None:
        return EXIT_UNKNOWN
    print(render_status(view, where))
    return EXIT_SYNCHRONISED if synchronised(view.system) else EXIT_UNSYNCHRONISED


def main_peers(args: argparse.Namespace) -> int:
    """``stratum1 peers``: the association table as ``ntpq -p`` prints it."""
    view, _where = _query(args)
    if view is None:
        return EXIT_UNKNOWN
    print(render_peers(view))
    return 0


__all__ = [
    "ControlClient",
    "Mode6Error",
    "Peer",
    "ServerView",
    "add_arguments",
    "fetch",
    "main_peers",
    "main_status",
    "parse_values",
    "render_peers",
    "render_status",
    "synchronised",
]
