"""The NTP wire format (versions 1-4): header, RFC 7822 extension fields and legacy MACs.

Small classes that pack and unpack themselves. Timestamps stay raw 64-bit NTP values here;
``stratum1.ntptime`` converts them to and from integer Unix nanoseconds. Mode-6/7 packets are
not NTP time packets: ``peek_mode`` routes them, ``NtpPacket.unpack`` refuses them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .ntptime import ns_to_ntp64, ntp64_to_ns, seconds_to_short, short_to_seconds

MODE_UNSPEC = 0
MODE_ACTIVE = 1
MODE_PASSIVE = 2
MODE_CLIENT = 3
MODE_SERVER = 4
MODE_BROADCAST = 5
MODE_CONTROL = 6
MODE_PRIVATE = 7

VERSION_MIN = 1
VERSION_MAX = 4

HEADER = struct.Struct("!BBbbII4sQQQQ")
HEADER_LEN = HEADER.size  # 48
EXT_HEADER = struct.Struct("!HH")
#: RFC 7822: an extension field is at least 16 octets, a multiple of 4.
EXT_MIN_LEN = 16
#: Legacy MAC sizes: key id alone (crypto-NAK), + MD5/AES-CMAC (16), + SHA1 (20).
MAC_LENGTHS = frozenset((4, 20, 24))
CRYPTO_NAK = b"\0\0\0\0"
#: RFC 7822: whatever follows the header is an extension field only if more than this remains.
_MAX_MAC_LEN = 24
_U32 = struct.Struct("!I")


class PacketError(ValueError):
    """The bytes are not a well-formed NTP packet (or a field is out of range when packing)."""


def peek_mode(data: bytes) -> int | None:
    """The mode of a datagram from its first octet (None for an empty datagram).

    Lets a receiver route mode 6/7 (and anything else) before committing to a decoder.
    """
    if not data:
        return None
    return data[0] & 0x07


def peek_version(data: bytes) -> int | None:
    """The version number of a datagram from its first octet (None for an empty datagram)."""
    if not data:
        return None
    return (data[0] >> 3) & 0x07


@dataclass(frozen=True, slots=True)
class ExtensionField:
    """An RFC 7822 extension field. ``value`` includes any padding, so packing is exact."""

    field_type: int
    value: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.field_type <= 0xFFFF:
            raise PacketError(f"extension field type {self.field_type} is not 16-bit")
        length = EXT_HEADER.size + len(self.value)
        if length % 4 or length < EXT_MIN_LEN or length > 0xFFFF:
            raise PacketError(
                f"extension field length {length} is not a multiple of 4 in {EXT_MIN_LEN}..65532"
            )

    @classmethod
    def padded(cls, field_type: int, value: bytes, min_length: int = EXT_MIN_LEN) -> ExtensionField:
        """Build a field whose value is zero-padded to a multiple of 4 and to ``min_length``."""
        length = max(EXT_HEADER.size + len(value), min_length)
        length += -length % 4
        return cls(field_type, value + bytes(length - EXT_HEADER.size - len(value)))

    def __len__(self) -> int:
        return EXT_HEADER.size + len(self.value)

    def pack(self) -> bytes:
        return EXT_HEADER.pack(self.field_type, len(self)) + self.value

    @classmethod
    def unpack_from(cls, data: bytes, offset: int) -> ExtensionField:
        """Decode the field starting at ``offset``; it must fit in ``data``."""
        if len(data) - offset < EXT_HEADER.size:
            raise PacketError("truncated extension field header")
        field_type, length = EXT_HEADER.unpack_from(data, offset)
        if length < EXT_MIN_LEN or length % 4:
            raise PacketError(f"bad extension field length {length}")
        if offset + length > len(data):
            raise PacketError(f"extension field length {length} runs past the packet")
        return cls(field_type, bytes(data[offset + EXT_HEADER.size : offset + length]))


@dataclass(frozen=True, slots=True)
class Mac:
    """A legacy message authentication code: 32-bit key id then the digest.

    A key id of 0 with no digest is the crypto-NAK (RFC 5905: "I cannot authenticate you").
    """

    keyid: int
    digest: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.keyid <= 0xFFFFFFFF:
            raise PacketError(f"MAC key id {self.keyid} is not 32-bit")
        if 4 + len(self.digest) not in MAC_LENGTHS:
            raise PacketError(f"MAC digest of {len(self.digest)} bytes (expected 0, 16 or 20)")

    @property
    def is_crypto_nak(self) -> bool:
        return self.keyid == 0 and not self.digest

    def __len__(self) -> int:
        return 4 + len(self.digest)

    def pack(self) -> bytes:
        return _U32.pack(self.keyid) + self.digest

    @classmethod
    def unpack(cls, data: bytes) -> Mac:
        if len(data) not in MAC_LENGTHS:
            raise PacketError(f"a MAC of {len(data)} bytes (expected 4, 20 or 24)")
        return cls(_U32.unpack_from(data)[0], bytes(data[4:]))


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise PacketError(f"{name} {value} outside {low}..{high}")


@dataclass(slots=True)
class NtpPacket:
    """One NTP time packet (modes 0-5). Short-format and timestamp fields are raw wire values."""

    leap: int = 0
    version: int = 4
    mode: int = MODE_CLIENT
    stratum: int = 0
    poll: int = 0  # log2 s, signed
    precision: int = 0  # log2 s, signed
    root_delay: int = 0  # NTP short format (16.16), raw
    root_dispersion: int = 0  # NTP short format (16.16), raw
    refid: bytes = b"\0\0\0\0"
    reference: int = 0  # 64-bit NTP timestamps, raw
    origin: int = 0
    receive: int = 0
    transmit: int = 0
    extensions: tuple[ExtensionField, ...] = ()
    mac: Mac | None = None

    # -- decoding ---------------------------------------------------------------------------
    @classmethod
    def unpack(cls, data: bytes) -> NtpPacket:
        """Decode a datagram; anything malformed raises ``PacketError``."""
        if len(data) < HEADER_LEN:
            raise PacketError(f"packet of {len(data)} bytes is shorter than the 48-byte header")
        (lvm, stratum, poll, precision, rdelay, rdisp, refid,
         reference, origin, receive, transmit) = HEADER.unpack_from(data)  # fmt: skip
        version = (lvm >> 3) & 0x07
        mode = lvm & 0x07
        if not VERSION_MIN <= version <= VERSION_MAX:
            raise PacketError(f"unsupported NTP version {version}")
        if mode in (MODE_CONTROL, MODE_PRIVATE):
            raise PacketError(f"mode {mode} is not an NTP time packet")
        extensions, mac = _unpack_trailer(data, version)
        return cls(lvm >> 6, version, mode, stratum, poll, precision, rdelay, rdisp, refid,
                   reference, origin, receive, transmit, extensions, mac)  # fmt: skip

    # -- encoding ---------------------------------------------------------------------------
    def pack(self) -> bytes:
        """Encode; refuses out-of-range fields and layouts a receiver would misread."""
        self.validate()
        parts = [self.pack_header()]
        parts.extend(ext.pack() for ext in self.extensions)
        if self.mac is not None:
            parts.append(self.mac.pack())
        return b"".join(parts)

    def pack_header(self) -> bytes:
        """The 48-byte header alone (what a MAC covers, together with the extension fields)."""
        return HEADER.pack((self.leap << 6) | (self.version << 3) | self.mode, self.stratum,
                           self.poll, self.precision, self.root_delay, self.root_dispersion,
                           self.refid, self.reference, self.origin, self.receive,
                           self.transmit)  # fmt: skip

    def validate(self) -> None:
        """Raise ``PacketError`` unless ``pack()`` would give bytes that decode back to self."""
        _check_range("leap", self.leap, 0, 3)
        _check_range("version", self.version, VERSION_MIN, VERSION_MAX)
        _check_range("mode", self.mode, 0, 5)
        _check_range("stratum", self.stratum, 0, 255)
        _check_range("poll", self.poll, -128, 127)
        _check_range("precision", self.precision, -128, 127)
        _check_range("root delay", self.root_delay, 0, 0xFFFFFFFF)
        _check_range("root dispersion", self.root_dispersion, 0, 0xFFFFFFFF)
        for name in ("reference", "origin", "receive", "transmit"):
            _check_range(f"{name} timestamp", getattr(self, name), 0, (1 << 64) - 1)
        if not isinstance(self.refid, bytes) or len(self.refid) != 4:
            raise PacketError("refid must be 4 bytes")
        if self.extensions and self.version < 4:
            raise PacketError("extension fields need NTP version 4")
        # RFC 7822 parsing reads what follows as an extension field only while more than 24
        # octets remain; a layout that breaks that rule would decode differently.
        remaining = sum(len(e) for e in self.extensions) + (len(self.mac) if self.mac else 0)
        for ext in self.extensions:
            if remaining <= _MAX_MAC_LEN:
                raise PacketError(
                    "extension fields too short to tell from a MAC (RFC 7822: the last field "
                    "needs 28 octets without a MAC)"
                )
            remaining -= len(ext)

    # -- conveniences -----------------------------------------------------------------------
    @property
    def root_delay_s(self) -> float:
        return _signed_short_to_seconds(self.root_delay)

    @property
    def root_dispersion_s(self) -> float:
        return short_to_seconds(self.root_dispersion)

    def transmit_ns(self, pivot_ns: int | None = None) -> int:
        """The transmit timestamp as Unix ns (era chosen near ``pivot_ns``)."""
        return _to_ns(self.transmit, pivot_ns)

    def receive_ns(self, pivot_ns: int | None = None) -> int:
        return _to_ns(self.receive, pivot_ns)

    def origin_ns(self, pivot_ns: int | None = None) -> int:
        return _to_ns(self.origin, pivot_ns)

    def reference_ns(self, pivot_ns: int | None = None) -> int:
        return _to_ns(self.reference, pivot_ns)

    @property
    def refid_text(self) -> str:
        """The refid as ntpq shows it for stratum 0/1 (ASCII, NULs stripped)."""
        return self.refid.rstrip(b"\0").decode("ascii", "replace")


def _to_ns(timestamp: int, pivot_ns: int | None) -> int:
    return ntp64_to_ns(timestamp) if pivot_ns is None else ntp64_to_ns(timestamp, pivot_ns)


def _signed_short_to_seconds(value: int) -> float:
    # Root delay may be negative in NTPv4 (RFC 5905 allows it); the wire carries it signed.
    value &= 0xFFFFFFFF
    if value & 0x80000000:
        value -= 1 << 32
    return value / 65536.0


def _unpack_trailer(data: bytes, version: int) -> tuple[tuple[ExtensionField, ...], Mac | None]:
    """Split what follows the header into extension fields and a MAC (RFC 7822 section 7.5)."""
    offset = HEADER_LEN
    end = len(data)
    extensions: list[ExtensionField] = []
    if version == 4:
        while end - offset > _MAX_MAC_LEN:
            ext = ExtensionField.unpack_from(data, offset)
            extensions.append(ext)
            offset += len(ext)
    rest = end - offset
    if rest == 0:
        return tuple(extensions), None
    if rest not in MAC_LENGTHS:
        raise PacketError(f"{rest} trailing bytes are neither an extension field nor a MAC")
    return tuple(extensions), Mac.unpack(data[offset:])


def timestamp_from_ns(unix_ns: int) -> int:
    """Unix ns to a raw 64-bit NTP timestamp; 0 stays 0 (the wire's "never")."""
    return ns_to_ntp64(unix_ns) if unix_ns else 0


def short_from_seconds(seconds: float) -> int:
    """A non-negative duration to raw NTP short format (saturating)."""
    return seconds_to_short(seconds)
