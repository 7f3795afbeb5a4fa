"""Symmetric-key authentication of NTP packets (RFC 5905 legacy MAC, RFC 8573 AES-CMAC).

MD5/SHA-x MAC = digest(key || packet) truncated to 20 bytes; CMAC MAC = CMAC(key, packet).
``Authenticator`` verifies in constant time, signs replies with the request's key, and decides
crypto-NAKs; it is the ``authenticate`` hook ``stratum1.server.NtpServer`` calls.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from .config.model import Config
from .keys import Algorithm, KeyFile, SymmetricKey, load_keys
from .packet import HEADER_LEN, MAC_LENGTHS, Mac

try:  # cryptography >= 43 keeps Camellia among the "decrepit" ciphers
    from cryptography.hazmat.decrepit.ciphers.algorithms import Camellia as _Camellia
except ImportError:  # pragma: no cover - older cryptography
    _Camellia = algorithms.Camellia  # type: ignore[attr-defined,misc]

_U32 = struct.Struct("!I")
#: RFC 7822: what follows the header is a MAC only if at most this many octets remain.
_MAX_MAC_LEN = 24

Signer = Callable[[bytes], bytes]


class AuthResult(Enum):
    """ntpd's four outcomes of looking at a packet's MAC (``is_authentic``)."""

    NONE = "none"  # no MAC
    OK = "ok"  # a MAC that verifies with a trusted key
    ERROR = "error"  # a MAC that does not: unknown/untrusted key, wrong length or bad digest
    CRYPTO_NAK = "crypto-nak"  # a bare key id 0: "I could not authenticate you"


class AuthError(Enum):
    """Why a MAC failed (the counters ``ntpq -c authinfo`` style reports)."""

    UNKNOWN_KEY = "unknown key"
    UNTRUSTED_KEY = "untrusted key"
    ADDRESS = "key not allowed from this address"
    BAD_LENGTH = "MAC length does not match the key type"
    BAD_DIGEST = "digest mismatch"


def compute_digest(key: SymmetricKey, data: bytes) -> bytes:
    """The MAC digest (without key id) of ``data`` under ``key`` (pure, no caching)."""
    return _Mac(key).digest(data)


def compute_mac(key: SymmetricKey, data: bytes) -> bytes:
    """Key id + digest: the bytes appended to ``data`` to authenticate it."""
    return _U32.pack(key.keyid) + compute_digest(key, data)


class _Mac:
    """One key's MAC engine: the keyed state is built once and copied per packet."""

    __slots__ = ("key", "_base", "_cmac", "_len", "keyid_bytes")

    def __init__(self, key: SymmetricKey) -> None:
        self.key = key
        self.keyid_bytes = _U32.pack(key.keyid)
        algo: Algorithm = key.algorithm
        self._len = algo.mac_len
        if algo.is_cmac:
            cipher = algorithms.AES(key.secret) if algo.impl == "AES" else _Camellia(key.secret)
            self._cmac = cmac.CMAC(cipher)
            self._base = None
        else:
            self._cmac = None
            self._base = hashlib.new(algo.impl, key.secret)

    def digest(self, data: bytes) -> bytes:
        if self._base is not None:
            h = self._base.copy()
            h.update(data)
            return h.digest()[: self._len]
        c = self._cmac.copy()  # type: ignore[union-attr]
        c.update(data)
        return c.finalize()

    def sign(self, data: bytes) -> bytes:
        """The Signer the server appends to a reply: key id + digest."""
        return self.keyid_bytes + self.digest(data)


@dataclass(slots=True)
class AuthStats:
    """Counters of authentication outcomes, by reason."""

    checked: int = 0
    ok: int = 0
    unknown_key: int = 0
    untrusted_key: int = 0
    address: int = 0
    bad_length: int = 0
    bad_digest: int = 0
    crypto_nak: int = 0
    signed: int = 0


class Authenticator:
    """The trusted keys and what to do with a MAC.

    ``auth(covered, mac)`` is the server hook (``stratum1.server.Authenticator``): a Signer for
    the reply (same key) when the MAC verifies with a trusted key, None when the request
    deserves a crypto-NAK (RFC 5905: unknown key, untrusted key, bad digest).
    """

    def __init__(
        self, keys: Mapping[int, SymmetricKey] | Iterable[SymmetricKey] = (),
        trusted: Iterable[int] = (),
    ) -> None:  # fmt: skip
        items = keys.values() if isinstance(keys, Mapping) else keys
        self._keys: dict[int, SymmetricKey] = {k.keyid: k for k in items}
        self._trusted = frozenset(trusted)
        self._macs: dict[int, _Mac] = {}
        for keyid in self._trusted:
            key = self._keys.get(keyid)
            if key is not None:
                self._macs[keyid] = _Mac(key)
        self.stats = AuthStats()
        self.last_error: AuthError | None = None

    @classmethod
    def from_files(
        cls, keys_path: str | None, trusted: Iterable[int] = ()
    ) -> tuple[Authenticator, KeyFile | None]:
        """Load ``keys_path`` (None: no keys) and trust ``trusted``; returns the key file too so
        the caller can log its diagnostics. Raises ``stratum1.keys.KeysError`` if unreadable."""
        if keys_path is None:
            return cls((), trusted), None
        keyfile = load_keys(keys_path)
        return cls(keyfile.keys, trusted), keyfile

    @classmethod
    def from_config(cls, config: Config) -> tuple[Authenticator, KeyFile | None]:
        """``keys`` + ``trustedkey`` of a parsed configuration (see ``from_files``)."""
        return cls.from_files(config.keys, config.trustedkeys)

    # -- what is known ------------------------------------------------------------------------
    @property
    def keys(self) -> Mapping[int, SymmetricKey]:
        return self._keys

    @property
    def trusted(self) -> frozenset[int]:
        return self._trusted

    def is_trusted(self, keyid: int) -> bool:
        """Known and listed in ``trustedkey`` (ntpd's ``authistrusted``)."""
        return keyid in self._macs

    def missing_trusted(self) -> frozenset[int]:
        """``trustedkey`` numbers that the keys file does not define (worth a warning)."""
        return self._trusted - self._keys.keys()

    def check_association_key(self, keyid: int) -> str | None:
        """Why ``server ... key N`` cannot work (None if it can): unknown or untrusted."""
        if keyid not in self._keys:
            return f"key {keyid} is not in the keys file"
        if keyid not in self._trusted:
            return f"key {keyid} is not listed in trustedkey"
        return None

    # -- verification -------------------------------------------------------------------------
    def verify(
        self, covered: bytes, keyid: int, digest: bytes, host: str | None = None
    ) -> SymmetricKey | None:
        """The trusted key whose MAC over ``covered`` is ``digest`` (constant-time compare), or
        None; ``last_error`` and ``stats`` say why. ``host`` is checked against a key's address
        list (NTP Classic's 4th keys-file column); a key with a list fails without a host."""
        self.stats.checked += 1
        engine = self._macs.get(keyid)
        if engine is None:
            if keyid in self._keys:
                return self._fail(AuthError.UNTRUSTED_KEY)
            return self._fail(AuthError.UNKNOWN_KEY)
        key = engine.key
        if key.allowed is not None and not _host_allowed(host, key.allowed):
            return self._fail(AuthError.ADDRESS)
        if len(digest) != engine._len:
            return self._fail(AuthError.BAD_LENGTH)
        if not hmac.compare_digest(engine.digest(covered), digest):
            return self._fail(AuthError.BAD_DIGEST)
        self.stats.ok += 1
        self.last_error = None
        return key

    def __call__(self, covered: bytes, mac: Mac, host: str | None = None) -> Signer | None:
        """The server hook: a Signer with the request's key, or None (send a crypto-NAK)."""
        if self.verify(covered, mac.keyid, mac.digest, host) is None:
            return None
        return self._signer(mac.keyid)

    def classify(
        self, data: bytes, host: str | None = None
    ) -> tuple[AuthResult, SymmetricKey | None]:
        """ntpd's outcome for a whole received time packet: NONE, OK (with the key), ERROR or
        CRYPTO_NAK. For associations (``server ... key N``, ``notrust`` peers)."""
        split = split_mac(data)
        if split is None:
            return AuthResult.NONE, None
        covered, keyid, digest = split
        if not digest:
            if keyid == 0:
                self.stats.crypto_nak += 1
                return AuthResult.CRYPTO_NAK, None
            self.last_error = AuthError.BAD_LENGTH
            self.stats.bad_length += 1
            return AuthResult.ERROR, None
        key = self.verify(covered, keyid, digest, host)
        return (AuthResult.OK, key) if key is not None else (AuthResult.ERROR, None)

    # -- signing ------------------------------------------------------------------------------
    def sign(self, keyid: int, data: bytes) -> bytes:
        """``data`` + key id + digest, for a packet we send with ``key N``. KeyError if the key
        is not known and trusted (an association with such a key must not send)."""
        return data + self._signer(keyid)(data)

    def signer(self, keyid: int) -> Signer:
        """The Signer for a trusted key (KeyError otherwise)."""
        return self._signer(keyid)

    def _signer(self, keyid: int) -> Signer:
        engine = self._macs.get(keyid)
        if engine is None:
            raise KeyError(f"key {keyid} is not a trusted key")
        self.stats.signed += 1
        return engine.sign

    def _fail(self, reason: AuthError) -> None:
        self.last_error = reason
        name = reason.name.lower()
        setattr(self.stats, name, getattr(self.stats, name) + 1)
        return None


def split_mac(data: bytes) -> tuple[bytes, int, bytes] | None:
    """(MAC-covered bytes, key id, digest) of a time packet, or None when it has no MAC.

    Walks RFC 7822 extension fields the way ``stratum1.packet`` does; a malformed trailer is
    reported as no MAC here (the packet decoder counts and drops it first).
    """
    end = len(data)
    offset = HEADER_LEN
    if end <= offset:
        return None
    version = (data[0] >> 3) & 0x07
    if version == 4:
        while end - offset > _MAX_MAC_LEN:
            if end - offset < 4:
                return None
            length = (data[offset + 2] << 8) | data[offset + 3]
            if length < 16 or length % 4 or offset + length > end:
                return None
            offset += length
    rest = end - offset
    if rest == 0 or rest not in MAC_LENGTHS:
        return None
    return bytes(data[:offset]), _U32.unpack_from(data, offset)[0], bytes(data[offset + 4 :])


def crypto_nak(reply: bytes) -> bytes:
    """``reply`` followed by the 4-byte crypto-NAK (key id 0, no digest), as RFC 5905 sends it
    to a client whose MAC could not be verified."""
    return reply + b"\0\0\0\0"


def _host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    if host is None:
        return False
    text = host.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) in allowed


__all__ = [
    "AuthError",
    "AuthResult",
    "AuthStats",
    "Authenticator",
    "Signer",
    "compute_digest",
    "compute_mac",
    "crypto_nak",
    "split_mac",
]
