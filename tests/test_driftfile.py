"""Tests for stratum1/driftfile.py: read, atomic write, corrupt files left alone."""

from __future__ import annotations

import logging
import os

import pytest

from stratum1.driftfile import DriftFile, DriftFileError, parse_drift, read_drift, write_drift

NS = 1_000_000_000


def test_parse_good_values() -> None:
    assert parse_drift("-12.345\n") == -12.345
    assert parse_drift("  3.5 0.002\n") == 3.5  # ntpd Classic's optional stability column


@pytest.mark.parametrize("text", ["", "abc", "1 2 3", "nan", "inf", "600.0", "-501"])
def test_parse_bad_values(text: str) -> None:
    with pytest.raises(DriftFileError):
        parse_drift(text)


def test_absent_file_is_none(tmp_path) -> None:
    assert read_drift(tmp_path / "ntp.drift") is None


def test_corrupt_file_ignored_and_untouched(tmp_path, caplog) -> None:
    path = tmp_path / "ntp.drift"
    path.write_bytes(b"\xff\xfegarbage")
    with caplog.at_level(logging.WARNING):
        assert read_drift(path) is None
    assert "corrupt" in caplog.text
    assert path.read_bytes() == b"\xff\xfegarbage"


def test_write_is_atomic_and_readable(tmp_path) -> None:
    path = tmp_path / "ntp.drift"
    path.write_text("1.000\n")
    write_drift(path, -17.25)
    assert read_drift(path) == -17.25
    assert sorted(os.listdir(tmp_path)) == ["ntp.drift"]  # no temporary left behind


def test_failed_write_leaves_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ntp.drift"
    path.write_text("2.500\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_drift(path, 9.0)
    assert path.read_text() == "2.500\n"
    assert sorted(os.listdir(tmp_path)) == ["ntp.drift"]


def test_hourly_schedule(tmp_path) -> None:
    df = DriftFile(tmp_path / "ntp.drift")
    assert df.load() is None
    t0 = 1_800_000_000 * NS
    assert not df.maybe_write(5.0, t0)
    assert not df.maybe_write(5.0, t0 + 1800 * NS)
    assert not df.maybe_write(5.0, t0 + 3600 * NS, sigma_ppm=3.0)  # not known well enough yet
    assert df.maybe_write(5.0, t0 + 3601 * NS)
    assert read_drift(df.path) == 5.0
    assert not df.maybe_write(5.1, t0 + 5000 * NS)
    assert not df.maybe_write(5.0002, t0 + 7300 * NS)  # no real change: spare the SD card
    assert df.maybe_write(5.2, t0 + 11000 * NS)


def test_unwritable_directory_counts_error(tmp_path) -> None:
    df = DriftFile(tmp_path / "missing" / "ntp.drift", interval_s=0)
    assert not df.maybe_write(1.0, 0)
    assert df.errors == 1
