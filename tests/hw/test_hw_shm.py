"""Tests for hw/shm.py: segment layouts and the count/valid protocol on real SysV segments."""

from __future__ import annotations

import os
import struct

import pytest
from stratum1.hw import shm

NS = 1_000_000_000
BASE = 0x53310000 + (os.getpid() % 4096) * 64  # private keys: never a real NTP unit


@pytest.fixture
def key():
    k = BASE + 1
    shm.remove_segment(k)
    yield k
    shm.remove_segment(k)


@pytest.fixture
def seg(key):
    s = shm.ShmSegment(key, 0o600)
    s.open()
    yield s
    s.close()


def test_layouts():
    assert shm.LAYOUT64.size == 96 and shm.LAYOUT32.size == 80
    t = shm.ShmTime(1, 2, 3, 4, 5, 6, 7, -8, 9, 10, 11, 12)
    for size in (96, 80):
        raw = shm.encode(t, size)
        assert len(raw) == size
        assert shm.decode(raw) == t
    raw64 = shm.encode(t, 96)
    # Field offsets of the 64-bit layout, as ipcs and gpsd see them.
    assert struct.unpack_from("=i", raw64, 48)[0] == 10  # valid
    assert struct.unpack_from("=I", raw64, 52)[0] == 11  # clockTimeStampNSec
    assert struct.unpack_from("=q", raw64, 24)[0] == 5  # receiveTimeStampSec
    raw32 = shm.encode(t, 80)
    assert struct.unpack_from("=i", raw32, 36)[0] == 10


def test_shm_key():
    assert shm.shm_key(0) == 1314148400 and shm.shm_key(3) == 0x4E545033


@pytest.mark.parametrize(
    "cusec, cnsec, expect_clock",
    [
        (123456, 123456789, 1_000 * NS + 123456789),  # ns agrees with µs: use ns
        (123456, 0, 1_000 * NS + 123456000),  # writer left ns at 0: fall back to µs
        (123456, 123457000, 1_000 * NS + 123456000),  # ns disagrees by a whole µs: µs
    ],
)
def test_nanoseconds_only_when_consistent(cusec, cnsec, expect_clock):
    t = shm.ShmTime(1, 0, 1000, cusec, 1000, 5, 0, -1, 3, 1, cnsec, 5000)
    assert t.times_ns()[0] == expect_clock


def test_create_perm_and_size(seg):
    info = shm.segment_info(seg.shmid)
    assert info["perms"] & 0o777 == 0o600
    assert info["size"] == shm.NATIVE_SIZE == seg.size


def test_world_writable_segment(key):
    s = shm.ShmSegment(key, 0o666)
    s.open()
    assert shm.segment_info(s.shmid)["perms"] & 0o777 == 0o666
    s.close()


def test_attach_existing_32bit_segment(key):
    lib = shm._lib()
    shmid = lib.shmget(key, 80, shm.IPC_CREAT | 0o600)
    assert shmid >= 0
    s = shm.ShmSegment(key)
    s.open()
    assert s.size == 80
    shm.write_sample(s, 2000 * NS + 5, 2000 * NS + 999, precision=-10)
    r = shm.read_sample(s)
    assert r.status == shm.OK and r.data.times_ns() == (2000 * NS + 5, 2000 * NS + 999)
    assert r.data.precision == -10
    s.close()


def test_foreign_segment_size_is_refused(key):
    lib = shm._lib()
    assert lib.shmget(key, 4096, shm.IPC_CREAT | 0o600) >= 0
    with pytest.raises(OSError, match="not an NTP segment"):
        shm.ShmSegment(key).open()


def test_attach_only_when_absent(key):
    with pytest.raises(OSError, match="shmget"):
        shm.ShmSegment(key, create=False).open()


def test_reader_protocol(seg):
    seg.init_reader()
    assert shm.read_sample(seg).status == shm.NOT_READY
    shm.write_sample(seg, 1_700_000_000 * NS + 123456789, 1_700_000_000 * NS + 987654321, leap=1)
    assert seg.valid == 1 and seg.count == 2
    r = shm.read_sample(seg)
    assert r.status == shm.OK
    assert r.data.clock_usec == 123456 and r.data.receive_usec == 987654  # truncated, not rounded
    assert r.data.leap == 1 and r.data.nsamples == 3
    assert seg.valid == 0  # taken
    assert shm.read_sample(seg).status == shm.NOT_READY


def test_torn_read_is_a_clash(seg, monkeypatch):
    shm.write_sample(seg, 10 * NS, 10 * NS)
    real_copy = seg.copy

    def racing_copy():
        data = real_copy()
        seg.count = seg.count + 1  # the writer started its next update meanwhile
        return data

    monkeypatch.setattr(seg, "copy", racing_copy)
    assert shm.read_sample(seg).status == shm.CLASH


def test_mode0_ignores_count(seg, monkeypatch):
    shm.write_sample(seg, 10 * NS, 10 * NS, mode=0)
    real_copy = seg.copy
    monkeypatch.setattr(seg, "copy", lambda: (setattr(seg, "count", seg.count + 5), real_copy())[1])
    assert shm.read_sample(seg).status == shm.OK


def test_bad_mode(seg):
    shm.write_sample(seg, 10 * NS, 10 * NS, mode=7)
    r = shm.read_sample(seg)
    assert r.status == shm.BAD_MODE and r.data.mode == 7


def test_detached_segment_errors(key):
    s = shm.ShmSegment(key)
    with pytest.raises(OSError):
        s.read_raw()
    s.open()
    s.close()
    s.close()
    with pytest.raises(OSError):
        _ = s.valid
