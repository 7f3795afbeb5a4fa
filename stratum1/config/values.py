"""Checked conversion of config words: integers, seconds, booleans, addresses and host names.

Each function returns the value or raises BadValue with a message fit for a diagnostic.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from dataclasses import dataclass


class BadValue(ValueError):
    """A word that is not a valid value; the message says what was expected."""


_INT_RE = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_REFCLOCK_RE = re.compile(r"127\.127\.([0-9]{1,3})\.([0-9]{1,3})\Z")


def parse_int(text: str, lo: int, hi: int, what: str = "") -> int:
    """A decimal (or 0x hexadecimal) integer in [lo, hi]."""
    if not _INT_RE.match(text):
        raise BadValue(f"{what + ' ' if what else ''}expects an integer, not {text!r}")
    value = int(text, 0) if text.lstrip("+-")[:2].lower() == "0x" else int(text, 10)
    if not lo <= value <= hi:
        raise BadValue(f"{what + ' ' if what else ''}{value} is out of range {lo}..{hi}")
    return value


def parse_float(text: str, lo: float, hi: float, what: str = "") -> float:
    """A finite decimal number in [lo, hi]."""
    if not _FLOAT_RE.match(text):
        raise BadValue(f"{what + ' ' if what else ''}expects a number, not {text!r}")
    value = float(text)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadValue(f"{what + ' ' if what else ''}{text} is out of range {lo:g}..{hi:g}")
    return value


def parse_bool01(text: str, what: str = "") -> bool:
    if text in ("0", "1"):
        return text == "1"
    raise BadValue(f"{what + ' ' if what else ''}expects 0 or 1, not {text!r}")


def is_hostname(text: str) -> bool:
    """An RFC 1123 host name (labels of letters, digits, hyphens; underscores tolerated)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # a mangled dotted quad is not a name
    return all(_LABEL_RE.match(label) for label in labels)


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed host word: ``kind`` is "ipv4", "ipv6", "refclock" or "host"."""

    text: str
    kind: str
    family: int | None
    refclock: tuple[int, int] | None = None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self.kind not in ("ipv4", "ipv6"):
            return None
        return ipaddress.ip_address(self.text.split("%", 1)[0])


def parse_refclock_address(text: str) -> tuple[int, int] | None:
    """(type, unit) of a 127.127.t.u word, None if the word is not of that form.

    Raises BadValue when it is of that form but t or u is over 255.
    """
    m = _REFCLOCK_RE.match(text)
    if not m:
        return None
    t, u = int(m.group(1)), int(m.group(2))
    if t > 255 or u > 255:
        raise BadValue(f"{text!r} is not a valid refclock address (127.127.type.unit, 0..255)")
    return t, u


def parse_address(text: str, allow_host: bool = True) -> Address:
    """An IPv4/IPv6 literal, a 127.127.t.u refclock address or (if allowed) a host name."""
    rc = parse_refclock_address(text)
    if rc is not None:
        return Address(text, "refclock", socket.AF_INET, rc)
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    addr_part, _, scope = bare.partition("%")
    try:
        ip = ipaddress.ip_address(addr_part)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version == 4:
            if scope:
                raise BadValue(f"{text!r}: a zone index applies only to IPv6 addresses")
            return Address(str(ip), "ipv4", socket.AF_INET)
        if "%" in bare and not scope:
            raise BadValue(f"{text!r}: empty IPv6 zone index")
        return Address(str(ip) + (f"%{scope}" if scope else ""), "ipv6", socket.AF_INET6)
    if re.fullmatch(r"[0-9.]+", text):
        raise BadValue(f"{text!r} is not a valid IPv4 address")
    if ":" in text:
        raise BadValue(f"{text!r} is not a valid IPv6 address")
    if allow_host and is_hostname(text):
        return Address(text, "host", None)
    if allow_host:
        raise BadValue(f"{text!r} is not a valid host name or address")
    raise BadValue(f"{text!r} is not a valid IP address")


def parse_mask(text: str, family: int) -> str:
    """A network mask in address form (255.255.255.0, ffff:ffff::) for ``family``."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise BadValue(f"mask {text!r} is not an address-form netmask") from None
    if (ip.version == 4) != (family == socket.AF_INET):
        raise BadValue(f"mask {text!r} is not of the same address family as the address")
    bits = int(ip)
    width = 32 if ip.version == 4 else 128
    inverted = ~bits & ((1 << width) - 1)
    if inverted & (inverted + 1):
        raise BadValue(f"mask {text!r} is not contiguous")
    return str(ip)


def prefix_to_mask(prefixlen: int, family: int) -> str:
    width = 32 if family == socket.AF_INET else 128
    bits = ((1 << width) - 1) ^ ((1 << (width - prefixlen)) - 1)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bits))
    return str(ipaddress.IPv6Address(bits))
