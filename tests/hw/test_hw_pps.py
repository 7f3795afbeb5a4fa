"""Tests for hw/pps.py: RFC 2783 ioctl numbers, struct layouts and KernelPps against a fake kernel."""

from __future__ import annotations

import errno
import os
import struct

import pps_fakes
import pytest
from stratum1.hw import pps as hwpps

NS = pps_fakes.NS


@pytest.fixture
def dev(tmp_path):
    path = tmp_path / "pps0"
    path.touch()
    return str(path)


def test_ioctl_numbers_match_the_kernel_encoding():
    if struct.calcsize("P") == 8:
        assert hwpps.PPS_GETPARAMS == 0x800870A1
        assert hwpps.PPS_SETPARAMS == 0x400870A2
        assert hwpps.PPS_GETCAP == 0x800870A3
        assert hwpps.PPS_FETCH == 0xC00870A4
        assert hwpps.PPS_KC_BIND == 0x400870A5
    else:
        assert hwpps.PPS_FETCH == 0xC00470A4


def test_struct_layouts():
    assert hwpps.FDATA.size == 64
    assert hwpps.KPARAMS.size == 40
    assert hwpps.BIND_ARGS.size == 12
    # The timeout sits at offset 48 in the native layout.
    buf = bytearray(64)
    struct.pack_into("=qiI", buf, 48, 7, 8, 1)
    assert hwpps.FDATA.unpack_from(buf)[-3:] == (7, 8, 1)


def test_decode_fdata_fields():
    buf = bytearray(64)
    struct.pack_into("=IIqiIqiIi", buf, 0, 5, 6, 1_700_000_000, 123, 0, 1_700_000_001, 456, 0, 0x1011)
    info = hwpps.decode_fdata(buf)
    assert info == hwpps.PpsInfo(5, 1_700_000_000 * NS + 123, 6, 1_700_000_001 * NS + 456, 0x1011)


def test_compat_layout_agrees_on_info_fields():
    # A 32-bit process on a 64-bit kernel gets 60 bytes without the padding before the
    # timeout; the info fields we read are at the same offsets in both.
    native = bytearray(64)
    struct.pack_into("=IIqiIqiIi", native, 0, 1, 2, 3, 4, 0, 5, 6, 0, 7)
    compat = bytearray(64)
    struct.pack_into("=IIqiIqiIi", compat, 0, 1, 2, 3, 4, 0, 5, 6, 0, 7)
    assert hwpps.decode_fdata(native) == hwpps.decode_fdata(compat)


def test_kparams_roundtrip():
    p = hwpps.PpsParams(1, 0x1011, 3 * NS + 5, -2)
    assert hwpps.decode_kparams(hwpps.encode_kparams(p)) == p


def test_open_sets_capture_mode_and_fetch_is_zero_timeout(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel(mode=hwpps.PPS_TSFMT_TSPEC)  # captures nothing yet
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev)
    src.open()
    assert kernel.mode & hwpps.PPS_CAPTUREASSERT
    assert src.mode == kernel.mode
    assert kernel.calls[:3] == ["GETCAP", "GETPARAMS", "SETPARAMS"]
    assert src.fetch() == []  # nothing captured yet
    kernel.pulse(1_700_000_000 * NS + 42)
    assert src.fetch() == [hwpps.Edge(1, 1_700_000_000 * NS + 42)]
    assert src.fetch() == [hwpps.Edge(1, 1_700_000_000 * NS + 42)]  # same edge until the next
    assert all(t == (0, 0, 0) for t in kernel.fetch_timeouts)
    src.close()
    src.close()  # twice is fine
    assert src.fd is None


def test_no_setparams_when_mode_already_right(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel()
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev)
    src.open()
    assert "SETPARAMS" not in kernel.calls
    src.close()


def test_clear_edge(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel(
        capabilities=hwpps.PPS_CAPTUREBOTH | hwpps.PPS_CANWAIT | hwpps.PPS_TSFMT_TSPEC
    )
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev, hwpps.EDGE_CLEAR)
    src.open()
    assert kernel.mode & hwpps.PPS_CAPTURECLEAR
    kernel.pulse(10 * NS, "assert")
    kernel.pulse(11 * NS, "clear")
    assert src.fetch() == [hwpps.Edge(1, 11 * NS)]
    src.close()


def test_clear_edge_unsupported_is_a_clear_error(monkeypatch, dev):
    pps_fakes.FakePpsKernel().install(monkeypatch)
    src = hwpps.KernelPps(dev, hwpps.EDGE_CLEAR)
    with pytest.raises(hwpps.PpsError, match="cannot capture the clear edge.*flag2"):
        src.open()
    assert src.fd is None  # closed again


def test_without_cap_sys_time_uses_existing_mode(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel(cap_sys_time=False, mode=hwpps.PPS_CAPTUREASSERT)
    kernel.capabilities |= hwpps.PPS_CAPTURECLEAR
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev)
    src.open()  # wants TSPEC added, is refused, but assert is captured already
    assert "CAP_SYS_TIME" in src.note
    src.close()
    with pytest.raises(hwpps.PpsError, match="needs CAP_SYS_TIME"):
        hwpps.KernelPps(dev, hwpps.EDGE_CLEAR).open()


def test_missing_device_names_the_alternatives(tmp_path):
    with pytest.raises(hwpps.PpsError, match="no such PPS device.*gpio:GPIO18") as info:
        hwpps.KernelPps(str(tmp_path / "pps7")).open()
    assert info.value.errno == errno.ENOENT


def test_not_a_pps_device(monkeypatch, dev):
    def ioctl(fd, request, arg=0, mutate=True):
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    import fcntl

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    with pytest.raises(hwpps.PpsError, match="not a usable PPS device"):
        hwpps.KernelPps(dev).open()


def test_kc_bind_and_unbind_on_close(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel()
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev)
    src.open()
    src.kc_bind(True)
    assert kernel.bound_edge == hwpps.PPS_CAPTUREASSERT and src.bound
    src.close()
    assert kernel.bound_edge == 0


def test_kc_bind_needs_privilege(monkeypatch, dev):
    kernel = pps_fakes.FakePpsKernel(cap_sys_time=False)
    kernel.install(monkeypatch)
    src = hwpps.KernelPps(dev)
    src.open()
    with pytest.raises(PermissionError):
        src.kc_bind(True)
    assert not src.bound
    src.close()


def test_bad_edge_name():
    with pytest.raises(ValueError):
        hwpps.KernelPps("/dev/pps0", "rising")


# -- PPS on a serial port's DCD line ---------------------------------------------------------------


def _sysfs(tmp_path, entries):
    root = tmp_path / "sys" / "class" / "pps"
    root.mkdir(parents=True)
    for name, path in entries.items():
        (root / name).mkdir()
        if path is not None:
            (root / name / "path").write_text(path + "\n")
    return str(root)


def test_find_pps_device_by_the_tty_it_names(tmp_path):
    tty = tmp_path / "ttyS1"
    tty.touch()
    (tmp_path / "gps0").symlink_to(tty)
    root = _sysfs(tmp_path, {"pps0": "", "pps1": "/dev/ttyS0", "pps2": str(tty), "pps9": None,
                             "other": str(tty)})
    assert hwpps.find_pps_device(str(tty), root, "/dev") == "/dev/pps2"
    assert hwpps.find_pps_device(str(tmp_path / "gps0"), root, "/d") == "/d/pps2"  # a symlink
    assert hwpps.find_pps_device("/dev/ttyS0", root) == "/dev/pps1"
    assert hwpps.find_pps_device("/dev/ttyUSB0", root) is None
    assert hwpps.find_pps_device("/dev/ttyS0", str(tmp_path / "no-sysfs")) is None


class LdiscPort:
    """A serial port as SerialDcdPps sees it: a path and TIOCSETD (recorded, or refused)."""

    def __init__(self, path, on_set=None):
        self.path = path
        self.ldiscs = []
        self.on_set = on_set

    def set_line_discipline(self, ldisc):
        if self.on_set is not None:
            self.on_set(ldisc)
        self.ldiscs.append(ldisc)


def test_serial_dcd_pps_attaches_reads_and_detaches(monkeypatch, tmp_path):
    kernel = pps_fakes.FakePpsKernel(mode=hwpps.PPS_TSFMT_TSPEC)
    kernel.install(monkeypatch)
    dev = tmp_path / "dev"
    dev.mkdir()
    root = _sysfs(tmp_path, {})

    def attach(ldisc):
        if ldisc == 18:  # pps-ldisc registers the source as the discipline opens
            (tmp_path / "sys/class/pps/pps4").mkdir()
            (tmp_path / "sys/class/pps/pps4/path").write_text("/dev/ttyS0\n")
            (dev / "pps4").touch()

    port = LdiscPort("/dev/ttyS0", attach)
    src = hwpps.SerialDcdPps(port, sysfs_root=root, dev_root=str(dev))
    assert src.fetch() == []  # not open yet
    src.open()
    src.open()  # once is enough
    assert port.ldiscs == [18] and src.device == f"{dev}/pps4"
    assert src.description == f"/dev/ttyS0 DCD ({dev}/pps4)"
    assert kernel.mode & hwpps.PPS_CAPTUREASSERT
    kernel.pulse(1_700_000_000 * NS + 7)
    assert src.fetch() == [hwpps.Edge(1, 1_700_000_000 * NS + 7)]
    src.close()
    src.close()
    assert port.ldiscs == [18, 0] and src.kernel is None


@pytest.mark.parametrize("err, words", [
    (errno.EINVAL, "no pps_ldisc"), (errno.EPERM, "CAP_SYS_ADMIN"),
    (errno.ENOTTY, "not a serial port"), (errno.EIO, "TIOCSETD N_PPS on /dev/ttyS0 failed"),
])
def test_serial_dcd_pps_refused_line_discipline(tmp_path, err, words):
    def refuse(ldisc):
        raise OSError(err, os.strerror(err))

    src = hwpps.SerialDcdPps(LdiscPort("/dev/ttyS0", refuse), sysfs_root=_sysfs(tmp_path, {}))
    with pytest.raises(hwpps.PpsError) as info:
        src.open()
    assert info.value.errno == err
    assert info.value.strerror.startswith("PPS on DCD unavailable: ") and words in str(info.value)


def test_serial_dcd_pps_device_that_does_not_open_is_detached(tmp_path):
    port = LdiscPort("/dev/ttyS0")
    root = _sysfs(tmp_path, {"pps2": "/dev/ttyS0"})
    src = hwpps.SerialDcdPps(port, hwpps.EDGE_CLEAR, sysfs_root=root, dev_root=str(tmp_path))
    with pytest.raises(hwpps.PpsError, match="PPS on DCD unavailable: .*no such PPS device"):
        src.open()  # sysfs lists pps2 but there is no device node
    assert port.ldiscs == [18, 0] and src.kernel is None
    with pytest.raises(ValueError):
        hwpps.SerialDcdPps(port, "rising")
