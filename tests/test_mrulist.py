"""Tests for stratum1/mrulist.py: nonces and MRU-list reads as ntpq's mrulist asks for them."""

from __future__ import annotations

import pytest

from stratum1.control import ERR_BADVALUE, ERR_UNKNOWNVAR, ControlError, parse_varlist
from stratum1.controlvars import fmt_timestamp
from stratum1.mrulist import NONCE_TIMEOUT_S, MruEntry, MruList

S = 1_000_000_000
NOW = 1_767_225_600 * S
CLIENT = ("127.0.0.40", 5555)


class Clock:
    def __init__(self) -> None:
        self.mono = 1000 * S

    def __call__(self) -> int:
        return self.mono


def table(n: int) -> list[MruEntry]:
    return [MruEntry(f"192.0.2.{i % 250 + 1}", 1000 + i, NOW - 900 * S, NOW - (n - i) * S,
                     i + 1, mode=3, version=4, flags=0x40 if i % 2 else 0) for i in range(n)]


def make(entries: list[MruEntry]) -> tuple[MruList, Clock]:
    mono = Clock()
    return MruList(lambda: entries, now_ns=lambda: NOW, monotonic_ns=mono), mono


def read(mru: MruList, extra: str = "", max_bytes: int = 32 * 468,
         address: tuple = CLIENT) -> dict[str, str]:
    nonce = mru.nonce(CLIENT).decode().strip()
    body = mru.read_mru(f"{nonce}, frags=32{extra}".encode(), address, max_bytes)
    assert all(len(line) < 72 for line in body.decode().split("\r\n"))
    return {k: v or "" for k, v in parse_varlist(body.replace(b"\r\n", b""))}


def test_nonce_roundtrip_age_and_address():
    mru, mono = make([])
    nonce = mru.make_nonce(CLIENT)
    assert mru.nonce_valid(nonce, CLIENT)
    assert not mru.nonce_valid(nonce, ("127.0.0.41", 5555))
    assert not mru.nonce_valid(nonce[:-1] + ("0" if nonce[-1] != "0" else "1"), CLIENT)
    assert not mru.nonce_valid("zz", CLIENT)
    mono.mono += (NONCE_TIMEOUT_S + 1) * S
    assert not mru.nonce_valid(nonce, CLIENT)
    assert mru.nonce(CLIENT).startswith(b"nonce=")


def test_read_without_a_valid_nonce_is_refused():
    mru, _ = make(table(3))
    with pytest.raises(ControlError) as err:
        mru.read_mru(b"frags=32", CLIENT, 10000)
    assert err.value.code == ERR_BADVALUE
    with pytest.raises(ControlError):
        read(mru, address=("198.51.100.1", 1))


def test_small_table_in_one_answer_oldest_first():
    entries = table(3) + [MruEntry("2001:db8::1", 123, NOW - 5 * S, NOW - S, 9, 4, 3, 0)]
    mru, _ = make(entries)
    v = read(mru)
    assert v["addr.0"] == "192.0.2.1:1000" and v["addr.3"] == "[2001:db8::1]:123"
    assert v["last.0"] == fmt_timestamp(NOW - 3 * S) and v["first.0"] == fmt_timestamp(NOW - 900 * S)
    assert v["ct.2"] == "3" and v["mv.3"] == str((3 << 3) | 4) and v["rs.1"] == "0x40"
    assert v["now"] == fmt_timestamp(NOW) and v["last.newest"] == fmt_timestamp(NOW - S)
    assert "nonce" in v


def test_large_table_continues_from_the_clients_newest_entry():
    entries = table(400)
    mru, _ = make(entries)
    seen: list[str] = []
    extra = ""
    for _ in range(10):
        v = read(mru, extra)
        rows = sorted(int(k[5:]) for k in v if k.startswith("addr."))
        seen += [v[f"addr.{i}"] for i in rows]
        if "now" in v:
            break
        last = rows[-1]
        extra = f", addr.0={v[f'addr.{last}']}, last.0={v[f'last.{last}']}"
    else:
        pytest.fail("the list never completed")
    assert seen == [f"{e.address}:{e.port}" for e in entries]


def test_continuation_point_gone_is_unknownvar():
    mru, _ = make(table(5))
    with pytest.raises(ControlError) as err:
        read(mru, ", addr.0=192.0.2.99:1, last.0=0x0.0")
    assert err.value.code == ERR_UNKNOWNVAR


def test_filters_and_limits():
    mru, _ = make(table(20))
    v = read(mru, ", mincount=18")
    assert [v[k] for k in sorted(v) if k.startswith("ct.")] == ["18", "19", "20"]
    v = read(mru, ", resall=0x40")
    assert {v[k] for k in v if k.startswith("rs.")} == {"0x40"}
    v = read(mru, ", maxlstint=3")
    assert sum(k.startswith("addr.") for k in v) == 3
    v = read(mru, ", limit=4")
    assert sum(k.startswith("addr.") for k in v) == 4 and "now" not in v
    v = read(mru, ", recent=2")
    assert [v["addr.0"], v["addr.1"]] == ["192.0.2.19:1018", "192.0.2.20:1019"]
    with pytest.raises(ControlError) as err:
        read(mru, ", limit=many")
    assert err.value.code == ERR_BADVALUE
