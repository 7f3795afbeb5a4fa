"""Tests for stratum1/auth.py: MACs against independent computations, constant-time checks,
crypto-NAK decisions, and the server hook."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stratum1 import auth as auth_mod
from stratum1.auth import (
    Authenticator,
    AuthError,
    AuthResult,
    compute_digest,
    compute_mac,
    crypto_nak,
    split_mac,
)
from stratum1.keys import parse_keys
from stratum1.packet import HEADER_LEN, ExtensionField, Mac, NtpPacket
from stratum1.server import NtpServer, ReplyTemplate
from stratum1.snapshot import SystemSnapshot

KEYS = parse_keys(
    "1 MD5 sundial\n"
    "2 SHA1 a7cb86a4cba80101a7cb86a4cba80101a7cb86a4\n"
    "3 AES128CMAC 2b7e151628aed2a6abf7158809cf4f3c\n"
    "4 SHA256 0011223344556677889900112233445566778899\n"
    "5 MD5 untrusted\n"
    "6 AES256CMAC 603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4\n",
    "test.keys",
).keys
TRUSTED = {1, 2, 3, 4, 6}


def _request(version: int = 4) -> bytes:
    return NtpPacket(version=version, mode=3, transmit=0xE1234567_89ABCDEF, poll=6).pack()


# -- independent MAC computations ------------------------------------------------------------
def _independent_cmac(key: bytes, message: bytes) -> bytes:
    """AES-CMAC from RFC 4493's description, on top of raw AES-ECB (not the CMAC class)."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def aes(block: bytes) -> bytes:
        return enc.update(block)

    def dbl(block: bytes) -> bytes:
        value = int.from_bytes(block, "big") << 1
        if value >> 128:
            value = (value & ((1 << 128) - 1)) ^ 0x87
        return value.to_bytes(16, "big")

    k1 = dbl(aes(bytes(16)))
    k2 = dbl(k1)
    blocks = [message[i : i + 16] for i in range(0, len(message), 16)] or [b""]
    last = blocks[-1]
    if len(last) == 16:
        last = bytes(a ^ b for a, b in zip(last, k1, strict=True))
    else:
        padded = last + b"\x80" + bytes(15 - len(last))
        last = bytes(a ^ b for a, b in zip(padded, k2, strict=True))
    state = bytes(16)
    for block in blocks[:-1]:
        state = aes(bytes(a ^ b for a, b in zip(state, block, strict=True)))
    return aes(bytes(a ^ b for a, b in zip(state, last, strict=True)))


RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MSG = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, "bb1d6929e95937287fa37d129b756746"), (16, "070a16b46b4d4144f79bdd9dd04a287c"),
     (40, "dfa66747de9ae63030ca32611497c827"), (64, "51f0bebf7e3b9d92fc49741779363cfe")],
)  # fmt: skip
def test_aes_cmac_rfc4493_vectors(length: int, expected: str) -> None:
    key = KEYS[3]
    assert key.secret == RFC4493_KEY
    assert compute_digest(key, RFC4493_MSG[:length]).hex() == expected
    assert _independent_cmac(RFC4493_KEY, RFC4493_MSG[:length]).hex() == expected


def test_aes256_cmac_against_independent_computation() -> None:
    data = _request()
    assert compute_digest(KEYS[6], data) == _independent_cmac(KEYS[6].secret, data)


def test_md5_mac_is_md5_of_key_then_packet() -> None:
    data = _request()
    assert compute_digest(KEYS[1], data) == hashlib.md5(b"sundial" + data).digest()
    assert compute_mac(KEYS[1], data) == struct.pack("!I", 1) + hashlib.md5(
        b"sundial" + data
    ).digest()


def test_sha1_mac_against_cryptography() -> None:
    data = _request()
    h = hashes.Hash(hashes.SHA1())
    h.update(KEYS[2].secret + data)
    assert compute_digest(KEYS[2], data) == h.finalize()


def test_sha256_mac_is_truncated_to_20_bytes() -> None:
    data = _request()
    h = hashes.Hash(hashes.SHA256())
    h.update(KEYS[4].secret + data)
    digest = compute_digest(KEYS[4], data)
    assert len(digest) == 20
    assert digest == h.finalize()[:20]


# -- verification ----------------------------------------------------------------------------
@pytest.mark.parametrize("keyid", [1, 2, 3, 4, 6])
def test_signed_request_verifies_and_reply_is_signed_with_the_same_key(keyid: int) -> None:
    a = Authenticator(KEYS, TRUSTED)
    request = a.sign(keyid, _request())
    covered, got_id, digest = split_mac(request)  # type: ignore[misc]
    assert got_id == keyid and covered == request[:HEADER_LEN]
    signer = a(covered, Mac(got_id, digest))
    assert signer is not None
    reply = b"R" * 48
    trailer = signer(reply)
    assert trailer == compute_mac(KEYS[keyid], reply)
    assert a.classify(reply + trailer) == (AuthResult.OK, KEYS[keyid])


def test_bad_digest_unknown_and_untrusted_keys_fail() -> None:
    a = Authenticator(KEYS, TRUSTED)
    data = _request()
    good = compute_digest(KEYS[1], data)
    bad = bytes([good[0] ^ 1]) + good[1:]
    assert a(data, Mac(1, bad)) is None
    assert a.last_error is AuthError.BAD_DIGEST
    assert a(data, Mac(99, good)) is None
    assert a.last_error is AuthError.UNKNOWN_KEY
    assert a(data, Mac(5, compute_digest(KEYS[5], data))) is None
    assert a.last_error is AuthError.UNTRUSTED_KEY
    # A SHA1-sized MAC for an MD5 key is not an MD5 MAC.
    assert a(data, Mac(1, good + b"\0" * 4)) is None
    assert a.last_error is AuthError.BAD_LENGTH
    assert a.stats.bad_digest == a.stats.unknown_key == a.stats.untrusted_key == 1
    assert a.stats.ok == 0


def test_digest_of_other_data_fails() -> None:
    a = Authenticator(KEYS, TRUSTED)
    data = _request()
    other = _request(version=3)
    assert a(other, Mac(1, compute_digest(KEYS[1], data))) is None


def test_comparison_is_constant_time(monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    a = Authenticator(KEYS, TRUSTED)
    data = _request()
    digest = compute_digest(KEYS[2], data)
    assert a(data, Mac(2, digest)) is not None
    assert calls == [(digest, digest)]


def test_no_keys_means_every_mac_fails() -> None:
    a = Authenticator()
    assert a(_request(), Mac(1, bytes(16))) is None
    with pytest.raises(KeyError):
        a.sign(1, b"x")


def test_address_list_restricts_a_key() -> None:
    keys = parse_keys("9 MD5 abc 192.0.2.1\n", "k").keys
    a = Authenticator(keys, {9})
    data = _request()
    mac = Mac(9, compute_digest(keys[9], data))
    assert a(data, mac, "192.0.2.1") is not None
    assert a(data, mac, "::ffff:192.0.2.1") is not None
    assert a(data, mac, "192.0.2.2") is None
    assert a.last_error is AuthError.ADDRESS
    assert a(data, mac) is None  # no address given: fail closed


def test_trust_bookkeeping() -> None:
    a = Authenticator(KEYS, {1, 5, 77})
    assert a.is_trusted(1) and not a.is_trusted(2)
    assert a.missing_trusted() == {77}
    assert a.check_association_key(1) is None
    assert "not listed in trustedkey" in (a.check_association_key(2) or "")
    assert "not in the keys file" in (a.check_association_key(42) or "")


def test_from_config_loads_keys_and_trust(tmp_path) -> None:
    from stratum1.config.model import Config

    path = tmp_path / "ntp.keys"
    path.write_text("1 MD5 abc\n2 SHA1 xyz\n")
    path.chmod(0o600)
    a, keyfile = Authenticator.from_config(Config(keys=str(path), trustedkeys=frozenset({2})))
    assert keyfile is not None and sorted(keyfile.keys) == [1, 2]
    assert a.is_trusted(2) and not a.is_trusted(1)
    empty, none = Authenticator.from_config(Config())
    assert none is None and not empty.keys


# -- packets ---------------------------------------------------------------------------------
def test_split_mac_and_classify() -> None:
    a = Authenticator(KEYS, TRUSTED)
    plain = _request()
    assert split_mac(plain) is None
    assert a.classify(plain) == (AuthResult.NONE, None)
    assert a.classify(crypto_nak(plain)) == (AuthResult.CRYPTO_NAK, None)
    assert a.classify(plain + struct.pack("!I", 7)) == (AuthResult.ERROR, None)
    signed = a.sign(1, plain)
    broken = signed[:-1] + bytes([signed[-1] ^ 0xFF])
    assert a.classify(broken) == (AuthResult.ERROR, None)


def test_mac_after_extension_field_covers_the_field() -> None:
    a = Authenticator(KEYS, TRUSTED)
    ext = ExtensionField.padded(0x0104, b"x" * 28)
    packet = NtpPacket(mode=3, transmit=1, extensions=(ext,)).pack()
    signed = a.sign(3, packet)
    covered, keyid, digest = split_mac(signed)  # type: ignore[misc]
    assert covered == packet and keyid == 3
    assert a.classify(signed)[0] is AuthResult.OK
    decoded = NtpPacket.unpack(signed)
    assert decoded.mac == Mac(3, digest)


# -- the server hook -------------------------------------------------------------------------
class _Clock:
    def now_ns(self) -> int:
        return 1_700_000_000_000_000_000

    def monotonic_ns(self) -> int:
        return 0


def _server(authenticator) -> NtpServer:
    return NtpServer(("127.0.0.1", 0), lambda: SystemSnapshot(), _Clock(),  # type: ignore[arg-type]
                     authenticate=authenticator)  # fmt: skip


def test_server_signs_reply_with_request_key_and_naks_unknown_keys() -> None:
    a = Authenticator(KEYS, TRUSTED)
    server = _server(a)
    template = ReplyTemplate(SystemSnapshot())
    request = a.sign(2, _request())
    reply = server.process(request, ("127.0.0.1", 40000), 1, template)
    assert reply is not None and len(reply) == 48 + 24
    assert a.classify(reply) == (AuthResult.OK, KEYS[2])
    unknown = _request() + struct.pack("!I", 42) + bytes(16)
    nak = server.process(unknown, ("127.0.0.1", 40000), 1, template)
    assert nak is not None and nak[48:] == b"\0\0\0\0"
    assert server.stats.crypto_naks == 1
    untrusted = compute_mac(KEYS[5], _request())
    nak = server.process(_request() + untrusted, ("127.0.0.1", 40000), 1, template)
    assert nak is not None and nak[48:] == b"\0\0\0\0"


# -- interoperation: ntpsec's ntpdig and chronyd verify our signed replies -----------------------
import os  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from stratum1.clock import SystemClock  # noqa: E402

_CHRONYD = Path(os.environ.get("STRATUM1_REF_DIR", "/opt/stratum1-ref")) / "chrony/usr/sbin/chronyd"
INTEROP_KEYS = (
    "1 MD5 sundial\n"
    "2 SHA1 a7cb86a4cba80101a7cb86a4cba80101a7cb86a4\n"
    "3 AES128CMAC 2b7e151628aed2a6abf7158809cf4f3c\n"
)


def _no_clock_prefix() -> list[str]:
    """Run reference tools without CAP_SYS_TIME, so they cannot move this machine's clock."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_TIME before running tools")
    return [setpriv, "--inh-caps=-sys_time", "--bounding-set=-sys_time"]


def _free_loopback() -> str:
    for n in range(200, 254):
        host = f"127.0.0.{n}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, 123))
            except OSError:
                continue
        return host
    pytest.skip("no 127.0.0.N with UDP port 123 free (needs root)")


class _LiveServer:
    """An in-process NtpServer on 127.0.0.N:123 signing with ``authenticator``."""

    def __init__(self, authenticator: Authenticator) -> None:
        clock = SystemClock()
        now = clock.now_ns()
        snapshot = SystemSnapshot(leap=0, stratum=1, precision=-20, refid=b"GPS\0",
                                  reference_ns=now, root_dispersion=0.0001)  # fmt: skip
        self.host = _free_loopback()
        self.server = NtpServer((self.host, 123), lambda: snapshot, clock,
                                authenticate=authenticator)  # fmt: skip
        self.server.open()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self.server.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                self.server.handle_readable()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def live_server():
    authenticator = Authenticator(parse_keys(INTEROP_KEYS, "interop.keys").keys, {1, 2, 3})
    server = _LiveServer(authenticator)
    yield server, authenticator
    server.close()


@pytest.mark.parametrize("keyid", [1, 2, 3])
def test_ntpdig_accepts_our_signed_replies(live_server, tmp_path, keyid: int) -> None:
    ntpdig = shutil.which("ntpdig")
    if ntpdig is None:
        pytest.skip("ntpdig not found: install Debian package ntpsec-ntpdig")
    server, authenticator = live_server
    keyfile = tmp_path / "ntp.keys"
    keyfile.write_text(INTEROP_KEYS)
    keyfile.chmod(0o600)
    result = subprocess.run([*_no_clock_prefix(), ntpdig, "-j", "-t", "3", "-a", str(keyid),
                             "-k", str(keyfile), server.host],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert '"stratum":1' in output.replace(" ", ""), output
    assert authenticator.stats.ok >= 1 and authenticator.stats.bad_digest == 0


def test_ntpdig_with_a_wrong_key_gets_no_time(live_server, tmp_path) -> None:
    ntpdig = shutil.which("ntpdig")
    if ntpdig is None:
        pytest.skip("ntpdig not found: install Debian package ntpsec-ntpdig")
    server, authenticator = live_server
    keyfile = tmp_path / "ntp.keys"
    keyfile.write_text("3 AES128CMAC 000102030405060708090a0b0c0d0e0f\n")
    keyfile.chmod(0o600)
    result = subprocess.run([*_no_clock_prefix(), ntpdig, "-j", "-t", "2", "-a", "3",
                             "-k", str(keyfile), server.host],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode != 0
    assert authenticator.stats.bad_digest >= 1
    assert server.server.stats.crypto_naks >= 1


@pytest.mark.parametrize(("keyid", "chrony_type"), [(1, "MD5"), (3, "AES128")])
def test_chronyd_accepts_our_signed_replies(live_server, tmp_path, keyid: int,
                                            chrony_type: str) -> None:  # fmt: skip
    if not _CHRONYD.is_file():
        pytest.skip(f"chronyd not found at {_CHRONYD} (scripts/install-interop-tools)")
    server, authenticator = live_server
    secret = {1: "ASCII:sundial", 3: "HEX:2b7e151628aed2a6abf7158809cf4f3c"}[keyid]
    keyfile = tmp_path / "chrony.keys"
    keyfile.write_text(f"{keyid} {chrony_type} {secret}\n")
    keyfile.chmod(0o600)
    directives = [
        f"server {server.host} iburst minpoll -2 maxpoll -2 maxsamples 4 key {keyid}",
        f"keyfile {keyfile}",
        f"pidfile {tmp_path}/chronyd.pid",
        f"driftfile {tmp_path}/chrony.drift",
        "cmdport 0",
    ]
    result = subprocess.run([*_no_clock_prefix(), str(_CHRONYD), "-Q", "-u", "root", "-t", "20",
                             "-f", "/dev/null", *directives],
                            capture_output=True, text=True, timeout=40)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "System clock wrong by" in output, output
    assert authenticator.stats.ok >= 1 and authenticator.stats.bad_digest == 0


def test_chronyd_with_a_wrong_key_gets_crypto_naks_and_no_time(live_server, tmp_path) -> None:
    if not _CHRONYD.is_file():
        pytest.skip(f"chronyd not found at {_CHRONYD} (scripts/install-interop-tools)")
    server, authenticator = live_server
    keyfile = tmp_path / "chrony.keys"
    keyfile.write_text("3 AES128 HEX:000102030405060708090a0b0c0d0e0f\n")
    keyfile.chmod(0o600)
    directives = [
        f"server {server.host} iburst minpoll -2 maxpoll -2 maxsamples 4 key 3",
        f"keyfile {keyfile}", f"pidfile {tmp_path}/chronyd.pid", "cmdport 0",
    ]  # fmt: skip
    result = subprocess.run([*_no_clock_prefix(), str(_CHRONYD), "-Q", "-u", "root", "-t", "6",
                             "-f", "/dev/null", *directives],
                            capture_output=True, text=True, timeout=40)  # fmt: skip
    assert result.returncode != 0
    assert "System clock wrong by" not in result.stdout + result.stderr
    assert authenticator.stats.bad_digest >= 1 and authenticator.stats.ok == 0
    assert server.server.stats.crypto_naks >= 1
