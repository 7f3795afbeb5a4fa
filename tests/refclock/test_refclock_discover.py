from stratum1.refclock.discover import DeviceRecord, candidates


def test_known_gps_maybe_gps_pps_and_gpiochips():
    recs = [
        DeviceRecord("tty", "/dev/ttyACM0", ["/dev/serial/by-id/usb-u-blox_GNSS-if00"], "1546", "01a8"),
        DeviceRecord("tty", "/dev/ttyUSB0", [], "067b", "2303"),
        DeviceRecord("tty", "/dev/ttyUSB1", [], "1234", "5678"),  # not a GPS
        DeviceRecord("tty", "/dev/ttyS0"),
        DeviceRecord("pps", "/dev/pps0", label="pps-gpio.-1"),
        DeviceRecord("gpio", "/dev/gpiochip0", label="pinctrl-bcm2711"),
        DeviceRecord("gpio", "/dev/gpiochip1", label="raspberrypi-exp-gpio"),
    ]
    out = candidates(recs, {"nmea": {0}})
    by_dev = {c["device"]: c for c in out}
    assert set(by_dev) == {"/dev/ttyACM0", "/dev/ttyUSB0", "/dev/pps0", "/dev/gpiochip0",
                           "/dev/gpiochip1"}
    ublox = by_dev["/dev/ttyACM0"]
    assert ublox["kind"] == "gps" and ublox["what"] == "u-blox 8" and ublox["usb"] == "1546:01a8"
    # unit 0 is taken by the configuration; the by-id link survives replugging
    assert ublox["config"] == (
        "refclock nmea unit 1 path /dev/serial/by-id/usb-u-blox_GNSS-if00 baud 9600"
    )
    assert by_dev["/dev/ttyUSB0"]["kind"] == "maybe-gps"
    assert by_dev["/dev/ttyUSB0"]["config"] == "refclock nmea unit 2 path /dev/ttyUSB0 baud 9600"
    assert by_dev["/dev/pps0"]["config"] == "refclock pps unit 0 path /dev/pps0"
    assert by_dev["/dev/gpiochip0"]["config"] == "refclock pps unit 1 path gpio:GPIO18"
    assert "gpio:raspberrypi-exp-gpio:OFFSET" in by_dev["/dev/gpiochip1"]["config"]


def test_nothing_found():
    assert candidates([]) == []
