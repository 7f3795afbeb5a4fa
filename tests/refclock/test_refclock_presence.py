import socket

from stratum1.refclock.presence import Prober


def test_device_nodes_found_under_dev_root(tmp_path):
    (tmp_path / "pps0").touch()
    (tmp_path / "ttyACM0").touch()
    p = Prober(dev=str(tmp_path), proc=str(tmp_path))
    assert p.check("pps").present and p.check("pps").detail.endswith("/pps0")
    assert not p.check("gpiochip").present
    assert p.check("serial-device").present
    assert not p.check("sysv-shm").present


def test_alternatives_and_conjunction(tmp_path):
    (tmp_path / "gpiochip0").touch()
    p = Prober(dev=str(tmp_path))
    assert p.check_all(["pps|gpiochip"]).present
    both = p.check_all(["pps", "gpiochip"])
    assert not both.present and "pps: no /dev/pps*" in both.detail
    assert p.check_all([]).present


def test_missing_module_and_unknown_key(tmp_path):
    p = Prober(dev=str(tmp_path), find_spec=lambda name: None)
    assert p.check("pyserial") .detail == "pyserial not installed"
    assert not p.check("bogus").present


def test_gpsd_probe_on_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        port = srv.getsockname()[1]
        assert Prober(gpsd_address=("127.0.0.1", port)).check("gpsd").present
    finally:
        srv.close()
    closed = Prober(gpsd_address=("127.0.0.1", port)).check("gpsd")
    assert not closed.present and "not reachable" in closed.detail
