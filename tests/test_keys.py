"""Tests for stratum1/keys.py: ntp.keys parsing, key types, errors named by file:line."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.keys import (
    ALGORITHMS,
    KeysError,
    algorithm,
    load_keys,
    parse_keys,
)

SHA1_HEX = "a7cb86a4cba80101a7cb86a4cba80101a7cb86a4"  # 40 hex digits = 20 bytes
AES_HEX = "000102030405060708090a0b0c0d0e0f"


def _one(text: str):
    result = parse_keys(text, "ntp.keys")
    assert not result.errors, [str(d) for d in result.errors]
    (key,) = result.keys.values()
    return key


def test_md5_ascii_key() -> None:
    key = _one("1 MD5 sundial\n")
    assert (key.keyid, key.type, key.secret, key.mac_len) == (1, "MD5", b"sundial", 16)


def test_sha1_hex_key() -> None:
    key = _one(f"2 SHA1 {SHA1_HEX}\n")
    assert key.type == "SHA1"
    assert key.secret == bytes.fromhex(SHA1_HEX)
    assert key.mac_len == 20


def test_aes128cmac_hex_key() -> None:
    key = _one(f"3 AES128CMAC {AES_HEX}\n")
    assert key.type == "AES128CMAC"
    assert key.secret == bytes(range(16))
    assert key.mac_len == 16


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("md5", "MD5"), ("M", "MD5"), ("sha", "SHA1"), ("SHA-1", "SHA1"), ("aes", "AES128CMAC"),
     ("AES-128", "AES128CMAC"), ("aes128", "AES128CMAC"), ("AES256", "AES256CMAC"),
     ("sha256", "SHA256"), ("SHA512", "SHA512")],
)  # fmt: skip
def test_type_spellings(spelling: str, canonical: str) -> None:
    algo = algorithm(spelling)
    assert algo is not None and algo.name == canonical


def test_long_digests_are_truncated_to_20_bytes() -> None:
    assert ALGORITHMS["SHA256"].mac_len == 20
    assert ALGORITHMS["SHA512"].mac_len == 20
    assert ALGORITHMS["MD5"].mac_len == 16


def test_comments_blank_lines_crlf_and_unsorted() -> None:
    text = (
        "# ntp keys file\r\n"
        "\r\n"
        "   \t\r\n"
        f"20 SHA1 {SHA1_HEX}  # the SHA1 key\r\n"
        "10 MD5 SeCReT\r\n"
    )
    result = parse_keys(text, "k")
    assert not result.diagnostics
    assert sorted(result.keys) == [10, 20]
    assert result.keys[10].secret == b"SeCReT"


def test_twenty_characters_are_ascii_twenty_one_are_hex() -> None:
    twenty = "abcdefghij0123456789"
    assert _one(f"1 MD5 {twenty}").secret == twenty.encode()
    result = parse_keys("1 MD5 abcdefghij0123456789a", "k")
    assert result.keys == {}
    (diag,) = result.errors
    assert str(diag).startswith("k:1: key 1:")
    assert "even number" in diag.message


def test_twenty_two_hex_digits_are_hex() -> None:
    key = _one("1 MD5 00112233445566778899aa")
    assert key.secret == bytes.fromhex("00112233445566778899aa")


def test_non_hex_digit_is_an_error_naming_the_line() -> None:
    result = parse_keys(f"1 MD5 ok\n2 SHA1 {SHA1_HEX[:-2]}zz\n", "/etc/ntp.keys")
    assert list(result.keys) == [1]
    (diag,) = result.errors
    assert str(diag).startswith("/etc/ntp.keys:2: key 2:")
    assert "'z' is not a hex digit" in diag.message


def test_key_zero_and_too_large_are_errors() -> None:
    result = parse_keys("0 MD5 abc\n65536 MD5 abc\n65535 MD5 abc\n", "k")
    assert list(result.keys) == [65535]
    assert [d.location.line for d in result.errors] == [1, 2]
    assert "reserved" in result.errors[0].message


def test_unknown_type_and_des_are_errors() -> None:
    result = parse_keys("1 FOO abc\n2 N 29233E0461ECD6AE\n3 A sundial\n", "k")
    assert result.keys == {}
    assert [d.location.line for d in result.errors] == [1, 2, 3]
    assert "unknown key type 'FOO'" in result.errors[0].message
    assert "DES" in result.errors[1].message


def test_missing_fields_and_bad_number() -> None:
    result = parse_keys("1 MD5\nx MD5 abc\n", "k")
    assert result.keys == {}
    assert "expected 'keyno type key'" in result.errors[0].message
    assert "not a number" in result.errors[1].message


def test_very_long_key_is_truncated_with_a_warning() -> None:
    result = parse_keys("1 SHA1 " + "ab" * 40, "k")
    assert not result.errors
    assert result.keys[1].secret == b"\xab" * 32
    (warning,) = result.warnings
    assert "truncated" in warning.message


def test_cmac_key_of_wrong_size_is_padded_with_a_warning() -> None:
    result = parse_keys("1 AES128CMAC shortkey", "k")
    assert result.keys[1].secret == b"shortkey" + bytes(8)
    assert "zero-padded" in result.warnings[0].message
    result = parse_keys("1 AES128CMAC " + "11" * 20, "k")
    assert result.keys[1].secret == b"\x11" * 16
    assert "truncated" in result.warnings[0].message


def test_duplicate_key_keeps_the_last_with_a_warning() -> None:
    result = parse_keys("5 MD5 first\n5 MD5 second\n", "k")
    assert result.keys[5].secret == b"second"
    assert "k:1" in result.warnings[0].message


def test_address_list_column() -> None:
    result = parse_keys("7 MD5 abc 192.0.2.1,2001:db8::1\n8 MD5 abc not-an-ip\n", "k")
    assert result.keys[7].allowed == frozenset({"192.0.2.1", "2001:db8::1"})
    assert 8 not in result.keys
    assert "not an IP address" in result.errors[0].message


def test_secret_is_not_in_repr() -> None:
    key = _one("1 MD5 topsecret")
    assert "topsecret" not in repr(key)


def test_require_clean_raises_with_every_error() -> None:
    result = parse_keys("0 MD5 a\n1 FOO b\n", "k")
    with pytest.raises(KeysError) as info:
        result.require_clean()
    assert "k:1" in str(info.value) and "k:2" in str(info.value)
    assert parse_keys("1 MD5 a", "k").require_clean().keys[1].secret == b"a"


def test_load_keys_from_file(tmp_path) -> None:
    path = tmp_path / "ntp.keys"
    path.write_text(f"1 MD5 abc\n2 SHA1 {SHA1_HEX}\n")
    os.chmod(path, 0o600)
    result = load_keys(path)
    assert sorted(result.keys) == [1, 2]
    assert not result.diagnostics
    assert result.keys[1].location is not None and str(result.keys[1].location) == f"{path}:1"


def test_world_readable_keys_file_is_warned(tmp_path) -> None:
    path = tmp_path / "ntp.keys"
    path.write_text("1 MD5 abc\n")
    os.chmod(path, 0o644)
    result = load_keys(path)
    assert "readable by every user" in result.warnings[0].message


def test_missing_or_binary_file_raises(tmp_path) -> None:
    with pytest.raises(KeysError, match="cannot read keys file"):
        load_keys(tmp_path / "absent")
    path = tmp_path / "bin.keys"
    path.write_bytes(b"1 MD5 abc\n\xff\xfe\n")
    with pytest.raises(KeysError, match=":2: keys file is not UTF-8"):
        load_keys(path)


@given(st.text(max_size=300))
def test_parser_never_crashes(text: str) -> None:
    result = parse_keys(text, "fuzz")
    for key in result.keys.values():
        assert 1 <= key.keyid <= 65535
        assert key.secret
    for diag in result.diagnostics:
        assert str(diag).startswith("fuzz:")
