"""The symmetric-key file (ntpd's ``ntp.keys``): parse ``keyno type key`` lines into keys.

Types are MD5, SHA1, AES128CMAC and the other digests and CMAC ciphers the ``hashlib`` /
``cryptography`` stack provides; keys of up to 20 characters are ASCII, longer ones hex.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config.diagnostics import Diagnostic
from .config.model import Location

#: ntpsec accepts key numbers 1..65535 (NTP Classic stops at 65534); 0 is reserved.
KEYID_MIN = 1
KEYID_MAX = 65535
#: Tokens of up to this many characters are ASCII keys; longer ones are hex.
ASCII_KEY_MAX = 20
#: ntpd reads at most 32 key bytes (64 hex digits) and truncates longer keys with a warning.
KEY_BYTES_MAX = 32
#: Digests longer than this are truncated on the wire (the legacy MAC field holds 16 or 20).
MAC_DIGEST_MAX = 20
#: CMAC over a 128-bit block cipher gives a 16-byte MAC (RFC 8573).
CMAC_LEN = 16
#: Keys lines ntpd no longer reads: DES in its three spellings (RFC 5905 dropped DES).
_DES_TYPES = frozenset({"A", "N", "S", "DES"})


class KeysError(Exception):
    """The keys file cannot be used; ``diagnostics`` names every problem as ``file:line``."""

    def __init__(self, message: str, diagnostics: Iterable[Diagnostic] = ()) -> None:
        self.diagnostics = tuple(diagnostics)
        lines = [message, *(str(d) for d in self.diagnostics if d.is_error)]
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A MAC algorithm: ``digest`` (hash of key || packet) or ``cmac`` (CMAC with the key)."""

    name: str  # canonical spelling, as ntpq shows it
    kind: str  # "digest" | "cmac"
    impl: str  # hashlib name for digests, cipher name ("AES", "Camellia") for CMAC
    key_size: int = 0  # CMAC: the cipher's key length in bytes; digests take any length
    mac_len: int = 16

    @property
    def is_cmac(self) -> bool:
        return self.kind == "cmac"


def _digest(name: str, impl: str) -> Algorithm:
    size = hashlib.new(impl).digest_size
    return Algorithm(name, "digest", impl, 0, min(size, MAC_DIGEST_MAX))


def _build_algorithms() -> dict[str, Algorithm]:
    table: dict[str, Algorithm] = {}
    for name, impl in (
        ("MD5", "md5"), ("SHA1", "sha1"), ("SHA224", "sha224"), ("SHA256", "sha256"),
        ("SHA384", "sha384"), ("SHA512", "sha512"), ("SHA512-224", "sha512_224"),
        ("SHA512-256", "sha512_256"), ("SHA3-224", "sha3_224"), ("SHA3-256", "sha3_256"),
        ("SHA3-384", "sha3_384"), ("SHA3-512", "sha3_512"), ("RMD160", "ripemd160"),
        ("SM3", "sm3"), ("BLAKE2B512", "blake2b"), ("BLAKE2S256", "blake2s"),
    ):  # fmt: skip
        try:
            table[name] = _digest(name, impl)
        except ValueError:
            # Not every OpenSSL build carries RIPEMD-160 or SM3; such a type is then unknown.
            continue
    for bits in (128, 192, 256):
        table[f"AES{bits}CMAC"] = Algorithm(f"AES{bits}CMAC", "cmac", "AES", bits // 8, CMAC_LEN)
        table[f"CAMELLIA{bits}CMAC"] = Algorithm(
            f"CAMELLIA{bits}CMAC", "cmac", "Camellia", bits // 8, CMAC_LEN
        )
    return table


ALGORITHMS: dict[str, Algorithm] = _build_algorithms()

#: Other spellings of the same types (ntpd Classic, ntpsec's OpenSSL names, chrony's names).
ALIASES: dict[str, str] = {
    "M": "MD5",  # NTP v3 key files
    "SHA": "SHA1",
    "SHA-1": "SHA1",
    "SHA-224": "SHA224",
    "SHA-256": "SHA256",
    "SHA-384": "SHA384",
    "SHA-512": "SHA512",
    "RIPEMD160": "RMD160",
    "AES": "AES128CMAC",
    "AES128": "AES128CMAC",
    "AES-128": "AES128CMAC",
    "AES-128-CBC": "AES128CMAC",
    "AES-CMAC": "AES128CMAC",
    "AES192": "AES192CMAC",
    "AES-192": "AES192CMAC",
    "AES-192-CBC": "AES192CMAC",
    "AES256": "AES256CMAC",
    "AES-256": "AES256CMAC",
    "AES-256-CBC": "AES256CMAC",
    "CAMELLIA-128": "CAMELLIA128CMAC",
    "CAMELLIA-128-CBC": "CAMELLIA128CMAC",
    "CAMELLIA-192": "CAMELLIA192CMAC",
    "CAMELLIA-192-CBC": "CAMELLIA192CMAC",
    "CAMELLIA-256": "CAMELLIA256CMAC",
    "CAMELLIA-256-CBC": "CAMELLIA256CMAC",
}


def algorithm(type_name: str) -> Algorithm | None:
    """The algorithm a keys-file type names (case-insensitive, aliases allowed), or None."""
    upper = type_name.upper()
    return ALGORITHMS.get(ALIASES.get(upper, upper))


@dataclass(frozen=True, slots=True)
class SymmetricKey:
    """One key. ``secret`` never appears in ``repr`` (keys end up in logs and tracebacks)."""

    keyid: int
    algorithm: Algorithm
    secret: bytes = field(repr=False)
    location: Location | None = field(default=None, compare=False)
    #: NTP Classic's optional 4th column: addresses allowed to use the key (None: any).
    allowed: frozenset[str] | None = None

    @property
    def type(self) -> str:
        return self.algorithm.name

    @property
    def mac_len(self) -> int:
        return self.algorithm.mac_len


@dataclass(frozen=True, slots=True)
class KeyFile:
    """The result of reading a keys file: the usable keys and every problem found."""

    keys: dict[int, SymmetricKey]
    diagnostics: tuple[Diagnostic, ...] = ()
    path: str | None = None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    def require_clean(self) -> KeyFile:
        """Self, or ``KeysError`` if any line was in error (for ``config check``)."""
        if self.errors:
            raise KeysError(f"{len(self.errors)} error(s) in keys file {self.path or ''}".rstrip(),
                            self.diagnostics)  # fmt: skip
        return self


def parse_keys(text: str, filename: str = "<keys>") -> KeyFile:
    """Parse the text of a keys file. Bad lines are reported (``file:line``) and skipped; the
    good ones are kept, as ntpd does. A key number given twice keeps the last line (warned)."""
    keys: dict[int, SymmetricKey] = {}
    diags: list[Diagnostic] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        loc = Location(filename, lineno)
        key = _parse_line(line.split(), loc, diags)
        if key is None:
            continue
        if key.keyid in keys:
            first = keys[key.keyid].location
            diags.append(_warn(loc, f"key {key.keyid}", f"defined again (first at {first}); "
                               "this line replaces it"))  # fmt: skip
        keys[key.keyid] = key
    return KeyFile(keys, tuple(diags), filename)


def load_keys(path: str | os.PathLike[str]) -> KeyFile:
    """Read and parse a keys file. ``KeysError`` if it cannot be read; a file others can read
    earns a warning (keys are secrets: ntpd's docs ask for mode 0600)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        raise KeysError(f"cannot read keys file {name}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KeysError(f"{name}:{line}: keys file is not UTF-8 text") from None
    result = parse_keys(text, name)
    if stat.S_IMODE(st.st_mode) & stat.S_IROTH:
        warning = _warn(Location(name, 0), "keys",
                        "the keys file is readable by every user; make it mode 0600 or 0640")
        result = KeyFile(result.keys, (*result.diagnostics, warning), name)
    return result


def _parse_line(words: list[str], loc: Location, diags: list[Diagnostic]) -> SymmetricKey | None:
    if len(words) < 3:
        diags.append(_err(loc, "keys", "expected 'keyno type key'"))
        return None
    number, type_name, token = words[0], words[1], words[2]
    if not number.isdigit():
        diags.append(_err(loc, "keys", f"key number {number!r} is not a number"))
        return None
    keyid = int(number)
    where = f"key {keyid}"
    if keyid == 0:
        diags.append(_err(loc, where, "key 0 is reserved and cannot be set"))
        return None
    if keyid > KEYID_MAX:
        diags.append(_err(loc, where, f"key numbers go from {KEYID_MIN} to {KEYID_MAX}"))
        return None
    if type_name.upper() in _DES_TYPES:
        diags.append(_err(loc, where, f"type {type_name}: DES keys are not supported "
                          "(use AES128CMAC or SHA1)"))  # fmt: skip
        return None
    algo = algorithm(type_name)
    if algo is None:
        diags.append(_err(loc, where, f"unknown key type {type_name!r} (known: MD5, SHA1, "
                          "AES128CMAC, AES256CMAC, SHA256, ...)"))  # fmt: skip
        return None
    secret = _parse_secret(token, loc, where, diags)
    if secret is None:
        return None
    if algo.is_cmac and len(secret) != algo.key_size:
        # ntpsec pads or truncates CMAC keys to the cipher's key size, with a warning.
        diags.append(_warn(loc, where, f"{algo.name} takes a {algo.key_size}-byte key; "
                           f"the {len(secret)}-byte key is "
                           f"{'truncated' if len(secret) > algo.key_size else 'zero-padded'}"))
        secret = secret[: algo.key_size].ljust(algo.key_size, b"\0")
    allowed = None
    if len(words) > 3:
        allowed = _parse_allowed(words[3:], loc, where, diags)
        if allowed is None:
            return None
    return SymmetricKey(keyid, algo, secret, loc, allowed)


def _parse_secret(
    token: str, loc: Location, where: str, diags: list[Diagnostic]
) -> bytes | None:
    if len(token) <= ASCII_KEY_MAX:
        if not all(33 <= ord(c) <= 126 for c in token):
            diags.append(_err(loc, where, "an ASCII key must be printable characters"))
            return None
        return token.encode("ascii")
    if len(token) % 2:
        diags.append(_err(loc, where, f"a hex key has an even number of digits ({len(token)} "
                          "given); keys over 20 characters are read as hex"))  # fmt: skip
        return None
    try:
        secret = bytes.fromhex(token)
    except ValueError:
        bad = next(c for c in token if c not in "0123456789abcdefABCDEF")
        diags.append(_err(loc, where, f"{bad!r} is not a hex digit (keys over 20 characters "
                          "are read as hex)"))  # fmt: skip
        return None
    if len(secret) > KEY_BYTES_MAX:
        diags.append(_warn(loc, where, f"key of {len(secret)} bytes truncated to "
                           f"{KEY_BYTES_MAX} ({2 * KEY_BYTES_MAX} hex digits)"))  # fmt: skip
        secret = secret[:KEY_BYTES_MAX]
    return secret


def _parse_allowed(
    words: list[str], loc: Location, where: str, diags: list[Diagnostic]
) -> frozenset[str] | None:
    hosts: set[str] = set()
    for item in ",".join(words).split(","):
        if not item:
            continue
        try:
            hosts.add(str(ipaddress.ip_address(item)))
        except ValueError:
            # Refuse the key rather than drop its address list: that would widen who may use it.
            diags.append(_err(loc, where, f"{item!r} in the address list is not an IP address"))
            return None
    return frozenset(hosts)


def _err(loc: Location, directive: str, message: str) -> Diagnostic:
    return Diagnostic(loc, directive, message, "error")


def _warn(loc: Location, directive: str, message: str) -> Diagnostic:
    return Diagnostic(loc, directive, message, "warning")


__all__ = [
    "ALGORITHMS",
    "ALIASES",
    "Algorithm",
    "KeyFile",
    "KeysError",
    "SymmetricKey",
    "algorithm",
    "load_keys",
    "parse_keys",
]
