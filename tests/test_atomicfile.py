"""Tests for stratum1/atomicfile.py: replace whole or not at all."""

import os

import pytest

from stratum1 import atomicfile
from stratum1.atomicfile import write_atomically


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "drift"
    write_atomically(target, "1.000\n")
    write_atomically(target, "2.000\n", mode=0o600)
    assert target.read_text() == "2.000\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["drift"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "drift"
    target.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomically(target, "new\n")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["drift"]
