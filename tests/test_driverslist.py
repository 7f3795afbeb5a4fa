import json

from stratum1.config.parser import parse_text
from stratum1.driverslist import build_report, main, render
from stratum1.refclock.discover import DeviceRecord
from stratum1.refclock.presence import Prober
from stratum1.refclock.testing import VirtualClock, VirtualLoop
from stratum1.refclock.unit import RefclockUnit

CONF = """\
server 127.127.1.0
fudge 127.127.1.0 stratum 10
server 127.127.99.0
fudge 127.127.99.0 flag1 1
refclock nmea unit 0 path {dev}/gps0 baud 9600
refclock pps unit 1 path {dev}/pps1
"""


def setup(tmp_path):
    (tmp_path / "gps0").touch()
    config, diags = parse_text(CONF.format(dev=tmp_path), "ntp.conf")
    assert not [d for d in diags if d.severity == "error"], diags
    prober = Prober(dev=str(tmp_path), proc=str(tmp_path), find_spec=lambda n: object())
    records = lambda: [DeviceRecord("pps", "/dev/pps0", label="pps-gpio.-1")]  # noqa: E731
    return config, prober, records


def test_table_from_config(tmp_path):
    config, prober, records = setup(tmp_path)
    text = render(config, None, False, prober=prober, records=records)
    assert text.startswith("Drivers\n")
    lines = text.splitlines()
    local = next(line for line in lines if line.split()[:2] == ["1", "local"])
    assert "LOCL" in local and "nothing needed" in local
    assert "daemon not running" in text
    gps = next(line for line in lines if line.strip().startswith("GPS_NMEA(0)"))
    assert f"{tmp_path}/gps0" in gps and " yes " in gps and "ntp.conf:5" in gps
    pps = next(line for line in lines if line.strip().startswith("PPS(1)"))
    assert " NO " in pps
    # the candidate PPS gets a unit number the configuration does not use yet
    assert "refclock pps unit 0 path /dev/pps0" in text


def test_json_from_config(tmp_path):
    config, prober, records = setup(tmp_path)
    data = json.loads(render(config, None, True, prober=prober, records=records))
    assert data["source"] == "config"
    assert [d["name"] for d in data["drivers"]][:1] == ["local"]
    assert {u["address"] for u in data["units"]} == {
        "127.127.1.0", "127.127.99.0", "127.127.20.0", "127.127.22.1"
    }
    assert data["candidates"][0]["kind"] == "pps"


def test_live_units(tmp_path):
    config, prober, records = setup(tmp_path)
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    units = [RefclockUnit(rc, loop, clock) for rc in config.refclocks if rc.type in (1, 99)]
    for u in units:
        u.start()
    loop.advance(16)
    for u in units:
        u.poll(clock.now_ns())
    live = [u.status() for u in units]
    text = render(config, live, False, prober=prober, records=records)
    assert "Units (live)" in text
    sim = next(line for line in text.splitlines() if line.strip().startswith("SIM(0)"))
    assert " yes " in sim and sim.split()[7] == "1"  # reach 1 (octal)
    data = build_report(config, live, prober=prober, records=records)
    assert data["source"] == "daemon" and data["units"][1]["samples"] >= 16


def test_discovery_failure_does_not_break_the_report(tmp_path):
    config, prober, _ = setup(tmp_path)

    def broken():
        raise OSError("no udev")

    text = render(None, None, False, prober=prober, records=broken)
    assert "device discovery failed: no udev" in text and "(no refclocks configured)" in text


def test_main_with_config_errors_returns_1(tmp_path, capsys):
    conf = tmp_path / "bad.conf"
    conf.write_text("server 127.127.250.0\n")
    assert main(str(conf), True) == 1
    out, err = capsys.readouterr()
    assert "bad.conf:1" in err
    json.loads(out)
