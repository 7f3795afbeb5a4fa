"""Mode-6 control protocol (what ``ntpq`` speaks): the packet codec, fragmentation, status
words, variable lists, and the request dispatcher that answers from a read-only view.

Sans-I/O like the rest of the core: ``Control.respond(data, address)`` takes one datagram and
returns the datagrams to send back (several fragments for a long answer, none to stay silent).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

MODE_CONTROL = 6
HEADER = struct.Struct("!BBHHHHH")
HEADER_LEN = HEADER.size  # 12
#: Data bytes per fragment (ntpd's CTL_MAX_DATA_LEN); ntpq accepts at most MAX_FRAGMENTS.
MAX_DATA = 468
MAX_FRAGMENTS = 32
#: ntpd breaks the text of a reply into lines shorter than this.
MAX_LINE = 72

# The second header byte: response, error, more, and the 5-bit opcode.
FLAG_RESPONSE = 0x80
FLAG_ERROR = 0x40
FLAG_MORE = 0x20
OPCODE_MASK = 0x1F

OP_UNSPEC = 0
OP_READSTAT = 1
OP_READVAR = 2
OP_WRITEVAR = 3
OP_READCLOCK = 4
OP_WRITECLOCK = 5
OP_SETTRAP = 6
OP_ASYNCMSG = 7
OP_CONFIGURE = 8
OP_SAVECONFIG = 9
OP_READ_MRU = 10
OP_READ_ORDLIST_A = 11
OP_REQ_NONCE = 12
OP_UNSETTRAP = 31

ERR_UNSPEC = 0
ERR_PERMISSION = 1
ERR_BADFMT = 2
ERR_BADOP = 3
ERR_BADASSOC = 4
ERR_UNKNOWNVAR = 5
ERR_BADVALUE = 6
ERR_RESTRICT = 7

#: System status word, source field (bits 8-13).
SRC_UNSPEC = 0
SRC_PPS = 1
SRC_LF_RADIO = 2
SRC_HF_RADIO = 3
SRC_UHF_RADIO = 4
SRC_LOCAL = 5
SRC_NTP = 6
SRC_OTHER = 7
SRC_WRISTWATCH = 8
SRC_TELEPHONE = 9

#: System events (low nibble of the system status word).
SYS_EVNT_UNSPEC = 0x0
SYS_EVNT_FREQ_NOT_SET = 0x1
SYS_EVNT_FREQ_SET = 0x2
SYS_EVNT_SPIKE = 0x3
SYS_EVNT_FREQ_MODE = 0x4
SYS_EVNT_CLOCK_SYNC = 0x5
SYS_EVNT_RESTART = 0x6
SYS_EVNT_PANIC = 0x7
SYS_EVNT_NO_SYS_PEER = 0x8
SYS_EVNT_LEAP_ARMED = 0x9
SYS_EVNT_LEAP_DISARMED = 0xA
SYS_EVNT_LEAP_EVENT = 0xB
SYS_EVNT_CLOCK_STEP = 0xC
SYS_EVNT_KERN = 0xD
SYS_EVNT_TAI = 0xE
SYS_EVNT_STALE_LEAP = 0xF

#: Peer status word, high-byte flags.
PEER_CONFIG = 0x80
PEER_AUTHENABLE = 0x40
PEER_AUTHENTIC = 0x20
PEER_REACH = 0x10
PEER_BCAST = 0x08

#: MAC after the padded payload: 4-byte key id plus a 16- to 64-byte digest.
MIN_MAC = 4 + 16
MAX_MAC = 4 + 64

Address = tuple
Items = Sequence[tuple[str, str | None]]


class ControlError(Exception):
    """A request the server answers with a mode-6 error code (``ERR_*``)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"mode-6 error {code}")
        self.code = code


class IgnoredRequest(ValueError):
    """A datagram that gets no answer at all (not a well-formed request)."""


# -- status words ---------------------------------------------------------------------------------


def system_status(leap: int, source: int, count: int, event: int) -> int:
    """``LI<<14 | source<<8 | count<<4 | event`` (the event count saturates at 15)."""
    return ((leap & 3) << 14) | ((source & 0x3F) << 8) | (min(count, 15) << 4) | (event & 0xF)


def peer_status(flags: int, select: int, count: int, event: int) -> int:
    """``(flags | select)<<8 | count<<4 | event``; ``select`` is the tally code 0-7."""
    return (((flags & 0xF8) | (select & 7)) << 8) | (min(count, 15) << 4) | (event & 0xF)


def clock_status(current: int, count: int, last: int) -> int:
    """READCLOCK status: ``count<<4 | last event`` in the low byte (what ntpsec's ntpq decodes),
    with the current event in the high byte as classic ntpd keeps it."""
    return ((current & 0xFF) << 8) | (min(count, 15) << 4) | (last & 0xF)


# -- packets --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One decoded mode-6 request. ``payload`` is ``count`` bytes; ``mac`` may be empty."""

    version: int
    opcode: int
    sequence: int
    status: int
    assoc_id: int
    payload: bytes
    mac: bytes = b""
    covered: bytes = b""  # the bytes the MAC covers (header + payload padded to 8)

    @property
    def authenticated(self) -> bool:
        return bool(self.mac)


def parse_request(data: bytes) -> ControlRequest:
    """Decode a mode-6 request (pure).

    Raises IgnoredRequest for datagrams ntpd drops silently (too short, not mode 6, a response,
    a non-zero offset, an unknown version) and ControlError(ERR_BADFMT) for requests it answers
    with a format error (length not a multiple of 4, count beyond the data).
    """
    if len(data) < HEADER_LEN:
        raise IgnoredRequest(f"{len(data)} bytes is shorter than a mode-6 header")
    lvm, rem_op, sequence, status, assoc_id, offset, count = HEADER.unpack_from(data)
    version = (lvm >> 3) & 7
    if lvm & 7 != MODE_CONTROL:
        raise IgnoredRequest(f"mode {lvm & 7} is not a control request")
    if not 1 <= version <= 4:
        raise IgnoredRequest(f"version {version}")
    if rem_op & (FLAG_RESPONSE | FLAG_ERROR | FLAG_MORE):
        raise IgnoredRequest("response or fragment bits set in a request")
    if offset != 0:
        raise IgnoredRequest("a request with a non-zero offset")
    opcode = rem_op & OPCODE_MASK
    if len(data) % 4 or count > len(data) - HEADER_LEN:
        raise ControlError(ERR_BADFMT, f"length {len(data)} with count {count}")
    payload = bytes(data[HEADER_LEN:HEADER_LEN + count])
    mac = b""
    covered = b""
    end = (HEADER_LEN + count + 7) & ~7  # a MAC follows the payload padded to 8 bytes
    if MIN_MAC <= len(data) - end <= MAX_MAC:
        mac = bytes(data[end:])
        covered = bytes(data[:end])
    return ControlRequest(version, opcode, sequence, status, assoc_id, payload, mac, covered)


def encode_response(
    request: ControlRequest,
    leap: int,
    status: int,
    payload: bytes,
    *,
    max_data: int = MAX_DATA,
    sign: Callable[[bytes], bytes] | None = None,
) -> list[bytes]:
    """The fragments of a response (pure): same sequence, opcode, associd and status in each;
    offset and count per fragment; the more-bit on all but the last; data padded to 4 bytes
    (8 before a MAC when ``sign`` is given, which returns key id + digest for the bytes)."""
    if max_data < 4:
        raise ValueError("max_data must be at least 4")
    lvm = ((leap & 3) << 6) | (request.version << 3) | MODE_CONTROL
    chunks = [payload[i:i + max_data] for i in range(0, len(payload), max_data)] or [b""]
    out = []
    for n, chunk in enumerate(chunks):
        more = FLAG_MORE if n < len(chunks) - 1 else 0
        header = HEADER.pack(lvm, FLAG_RESPONSE | more | request.opcode, request.sequence,
                             status & 0xFFFF, request.assoc_id, n * max_data, len(chunk))
        body = header + chunk
        body += bytes(-len(body) % (8 if sign else 4))
        if sign is not None:
            body += sign(body)
        out.append(body)
    return out


def encode_error(request: ControlRequest, leap: int, code: int) -> bytes:
    """An error response: R|E|opcode, the error code in the status high byte, count 0."""
    lvm = ((leap & 3) << 6) | (request.version << 3) | MODE_CONTROL
    return HEADER.pack(lvm, FLAG_RESPONSE | FLAG_ERROR | request.opcode, request.sequence,
                       (code & 0xFF) << 8, request.assoc_id, 0, 0)


# -- variable lists -------------------------------------------------------------------------------


def format_items(items: Iterable[tuple[str, str | None]]) -> bytes:
    """``name=value`` items as ntpd writes them: ``", "`` between items, ``",\\r\\n"`` instead
    when the line would reach 72 characters, and a final ``"\\r\\n"``."""
    parts: list[str] = []
    line = 0
    first = True
    for name, value in items:
        item = name if value is None else f"{name}={value}"
        if not first:
            if line + len(item) + 3 >= MAX_LINE:  # ", " before it, "," after it
                parts.append(",\r\n")
                line = 0
            else:
                parts.append(", ")
                line += 2
        first = False
        parts.append(item)
        line += len(item)
    if not first:
        parts.append("\r\n")
    return "".join(parts).encode("ascii", "replace")


def parse_varlist(payload: bytes) -> list[tuple[str, str | None]]:
    """A request's comma-separated ``name[=value]`` list (commas inside quotes stay in the value).

    Raises ControlError(ERR_BADFMT) for bytes that are not printable ASCII text.
    """
    text = payload.rstrip(b"\0")
    if any(b < 0x20 and b not in (0x09, 0x0A, 0x0D) or b > 0x7E for b in text):
        raise ControlError(ERR_BADFMT, "variable list is not text")
    items: list[tuple[str, str | None]] = []
    current: list[str] = []
    quoted = False
    for ch in text.decode("ascii") + ",":
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            word = "".join(current).strip()
            current = []
            if not word:
                continue
            name, eq, value = word.partition("=")
            items.append((name.strip(), value.strip() if eq else None))
        else:
            current.append(ch)
    return items


@dataclass(frozen=True, slots=True)
class Variables:
    """One variable set (system, one peer, one clock) as formatted text values.

    ``defaults`` is what an empty request returns, in order; ``extra`` are the other names a
    request may ask for by name.
    """

    defaults: tuple[tuple[str, str], ...]
    extra: tuple[tuple[str, str], ...] = ()

    def select(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """The requested variables in request order; ControlError(ERR_UNKNOWNVAR) for a name
        that is not part of this set. An empty request gives the defaults."""
        if not names:
            return list(self.defaults)
        table = dict(self.extra)
        table.update(self.defaults)
        picked = []
        for name in names:
            if name not in table:
                raise ControlError(ERR_UNKNOWNVAR, f"unknown variable {name!r}")
            picked.append((name, table[name]))
        return picked


class ControlView(Protocol):
    """What the dispatcher reads: the daemon's state, formatted, at the time of the call."""

    def leap(self) -> int:
        """Leap indicator for the LI field of every reply."""
        ...

    def system_status(self) -> int: ...

    def system_variables(self) -> Variables: ...

    def association_status(self) -> list[tuple[int, int]]:
        """(association id, peer status word) of every association, by id."""
        ...

    def peer(self, assoc_id: int) -> tuple[int, Variables] | None:
        """(status, variables) of one association, None if it does not exist."""
        ...

    def clock(self, assoc_id: int) -> tuple[int, Variables] | None:
        """(clock status, clock variables) of a refclock association; ``assoc_id`` 0 means the
        system peer if it is a refclock, else the first refclock. None: no such refclock."""
        ...


#: Given the MAC-covered bytes and the MAC (key id + digest), return a signer for the reply if
#: the key is the control key and the digest verifies, else None.
ControlAuthenticator = Callable[[bytes, bytes], Callable[[bytes], bytes] | None]
#: Applies ``:config`` text at run time; returns the text sent back ("Config Succeeded" or the
#: error), raises ValueError for text it refuses.
Configurator = Callable[[str, Address], str]
#: Access check: may this address read the server's state (``restrict ... noquery``)?
QueryCheck = Callable[[Address], bool]


class MruResponder(Protocol):
    """The nonce and MRU-list requests (``stratum1.mrulist``)."""

    def nonce(self, address: Address) -> bytes: ...

    def read_mru(self, payload: bytes, address: Address, max_bytes: int) -> bytes: ...


@dataclass(slots=True)
class ControlStats:
    """Counters of mode-6 traffic."""

    received: int = 0
    answered: int = 0
    fragments: int = 0
    ignored: int = 0  # malformed beyond an answer
    denied: int = 0  # restrict noquery: no answer at all
    errors: dict[int, int] = field(default_factory=dict)  # error responses by code

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _allow_all(_address: Address) -> bool:
    return True


class Control:
    """The mode-6 request dispatcher.

    Wire it to the server with ``NtpServer(..., control_handler=Control(view).handle)``.
    """

    def __init__(
        self,
        view: ControlView,
        *,
        may_query: QueryCheck = _allow_all,
        authenticate: ControlAuthenticator | None = None,
        configure: Configurator | None = None,
        mru: MruResponder | None = None,
        max_data: int = MAX_DATA,
    ) -> None:
        self.view = view
        self.may_query = may_query
        self.authenticate = authenticate
        self.configure = configure
        self.mru = mru
        self.max_data = max_data
        self.stats = ControlStats()

    def handle(self, data: bytes, address: Address) -> bytes | list[bytes] | None:
        """Server hook: None (stay silent), one datagram, or a list of fragments."""
        replies = self.respond(data, address)
        if not replies:
            return None
        return replies[0] if len(replies) == 1 else replies

    def respond(self, data: bytes, address: Address) -> list[bytes]:
        """The datagrams answering ``data`` from ``address`` (empty: send nothing)."""
        self.stats.received += 1
        if not self.may_query(address):
            self.stats.denied += 1
            return []
        try:
            request = parse_request(data)
        except IgnoredRequest as exc:
            self.stats.ignored += 1
            log.debug("ignored mode-6 datagram from %s: %s", address, exc)
            return []
        except ControlError as exc:
            # Enough of a header to answer with BADFMT.
            lvm, rem_op, seq, _status, assoc, _off, _count = HEADER.unpack_from(data)
            bare = ControlRequest((lvm >> 3) & 7, rem_op & OPCODE_MASK, seq, 0, assoc, b"")
            return [self._error(bare, exc.code)]
        try:
            replies = self._dispatch(request, address)
        except ControlError as exc:
            return [self._error(request, exc.code)]
        except Exception:  # a bug in a view must not take the daemon down
            log.exception("mode-6 opcode %d from %s failed", request.opcode, address)
            return [self._error(request, ERR_UNSPEC)]
        self.stats.answered += 1
        self.stats.fragments += len(replies)
        return replies

    # -- opcodes --------------------------------------------------------------------------------

    def _dispatch(self, req: ControlRequest, address: Address) -> list[bytes]:
        op = req.opcode
        if op == OP_READSTAT:
            return self._read_status(req)
        if op == OP_READVAR:
            return self._read_variables(req)
        if op == OP_READCLOCK:
            return self._read_clock(req)
        if op == OP_UNSPEC:
            status = self._status_of(req.assoc_id)
            return self._reply(req, status, b"")
        if op == OP_REQ_NONCE:
            if self.mru is None:
                raise ControlError(ERR_BADOP, "MRU list not available")
            return self._reply(req, self.view.system_status(), self.mru.nonce(address))
        if op == OP_READ_MRU:
            if self.mru is None:
                raise ControlError(ERR_BADOP, "MRU list not available")
            body = self.mru.read_mru(req.payload, address, self.max_data * MAX_FRAGMENTS)
            return self._reply(req, self.view.system_status(), body)
        if op == OP_CONFIGURE:
            return self._configure(req, address)
        if op in (OP_WRITEVAR, OP_WRITECLOCK, OP_SAVECONFIG, OP_READ_ORDLIST_A):
            self._signer(req)  # PERMISSION unless signed with the control key
            raise ControlError(ERR_PERMISSION, "nothing here is writable over mode 6")
        raise ControlError(ERR_BADOP, f"opcode {op}")

    def _read_status(self, req: ControlRequest) -> list[bytes]:
        if req.assoc_id == 0:
            pairs = self.view.association_status()
            body = b"".join(struct.pack("!HH", a, s) for a, s in sorted(pairs))
            return self._reply(req, self.view.system_status(), body)
        found = self.view.peer(req.assoc_id)
        if found is None:
            raise ControlError(ERR_BADASSOC, f"association {req.assoc_id}")
        status, variables = found
        return self._reply(req, status, format_items(variables.defaults))

    def _read_variables(self, req: ControlRequest) -> list[bytes]:
        names = [name for name, _value in parse_varlist(req.payload)]
        if req.assoc_id == 0:
            status, variables = self.view.system_status(), self.view.system_variables()
        else:
            found = self.view.peer(req.assoc_id)
            if found is None:
                raise ControlError(ERR_BADASSOC, f"association {req.assoc_id}")
            status, variables = found
        return self._reply(req, status, format_items(variables.select(names)))

    def _read_clock(self, req: ControlRequest) -> list[bytes]:
        names = [name for name, _value in parse_varlist(req.payload)]
        found = self.view.clock(req.assoc_id)
        if found is None:
            raise ControlError(ERR_BADASSOC, f"no refclock association {req.assoc_id}")
        status, variables = found
        return self._reply(req, status, format_items(variables.select(names)))

    def _configure(self, req: ControlRequest, address: Address) -> list[bytes]:
        sign = self._signer(req)
        if self.configure is None:
            raise ControlError(ERR_PERMISSION, "run-time configuration is not enabled")
        try:
            text = req.payload.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise ControlError(ERR_BADFMT, "configuration text is not ASCII") from None
        try:
            result = self.configure(text, address)
        except ValueError as exc:
            result = str(exc) or "Config Failed"
        return self._reply(req, self.view.system_status(), result.encode("ascii", "replace"),
                           sign=sign)

    # -- helpers --------------------------------------------------------------------------------

    def _signer(self, req: ControlRequest) -> Callable[[bytes], bytes]:
        if not req.mac or self.authenticate is None:
            raise ControlError(ERR_PERMISSION, "request needs the control key")
        sign = self.authenticate(req.covered, req.mac)
        if sign is None:
            raise ControlError(ERR_PERMISSION, "bad MAC or not the control key")
        return sign

    def _status_of(self, assoc_id: int) -> int:
        if assoc_id == 0:
            return self.view.system_status()
        found = self.view.peer(assoc_id)
        if found is None:
            raise ControlError(ERR_BADASSOC, f"association {assoc_id}")
        return found[0]

    def _reply(self, req: ControlRequest, status: int, payload: bytes,
               sign: Callable[[bytes], bytes] | None = None) -> list[bytes]:
        limit = self.max_data * MAX_FRAGMENTS
        if len(payload) > limit:
            # ntpq gives up beyond MAX_FRAGMENTS; cut at a line end so what arrives still parses.
            cut = payload.rfind(b",", 0, limit)
            payload = payload[: cut if cut > 0 else limit]
        return encode_response(req, self.view.leap(), status, payload, max_data=self.max_data,
                               sign=sign)

    def _error(self, req: ControlRequest, code: int) -> bytes:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        try:
            leap = self.view.leap()
        except Exception:
            leap = 3
        return encode_error(req, leap, code)


__all__ = [
    "MAX_DATA",
    "Control",
    "ControlAuthenticator",
    "ControlError",
    "ControlRequest",
    "ControlStats",
    "ControlView",
    "IgnoredRequest",
    "MruResponder",
    "Variables",
    "clock_status",
    "encode_error",
    "encode_response",
    "format_items",
    "parse_request",
    "parse_varlist",
    "peer_status",
    "system_status",
]
