"""Tests for drivers/pps.py: the type 22 driver over a fake kernel PPS and a fake GPIO line."""

from __future__ import annotations

import pps_fakes as pf  # noqa: E402
import pytest
from stratum1.drivers import pps as ppsdrv
from stratum1.hw import pps as hwpps

from stratum1.refclock.registry import register

NS = pf.NS


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    (tmp_path / "pps0").touch()
    k = pf.FakePpsKernel()
    k.install(monkeypatch)
    return k


def _driver(tmp_path, **cfg):
    cfg.setdefault("path", str(tmp_path / "pps0"))
    ctx = pf.RecordingContext()
    drv = ppsdrv.PpsDriver(pf.stand_in_config(type=22, **cfg), ctx)
    return drv, ctx


def test_declaration():
    d = ppsdrv.PpsDriver.describe()
    assert (d["type"], d["name"], d["ntpq_name"], d["refid"], d["precision"]) == (22, "pps", "PPS", "PPS", -20)
    assert d["devices"] == ["/dev/pps{unit}"]
    assert ppsdrv.PpsDriver.accepts_fudge("time1") and ppsdrv.PpsDriver.accepts_fudge("flag2")
    assert not ppsdrv.PpsDriver.accepts_fudge("time2")
    assert register(ppsdrv.PpsDriver) is ppsdrv.PpsDriver


def test_default_device_and_path_options():
    assert ppsdrv.pps_path(pf.stand_in_config(type=22, unit=2), 2) == "/dev/pps2"
    assert ppsdrv.pps_path(pf.stand_in_config(type=22, ppspath="/dev/gpspps0"), 0) == "/dev/gpspps0"
    assert ppsdrv.pps_path(pf.stand_in_config(type=22, path="gpio:GPIO18", ppspath="/dev/x"), 0) == "gpio:GPIO18"


def test_each_new_pulse_is_handed_over_once(kernel, tmp_path):
    drv, ctx = _driver(tmp_path)
    drv.open()
    clock = ctx.clock
    ctx.tick()  # nothing captured yet
    assert ctx.pulses == [] and ctx.counts == {"no_new_pulse": 1}
    edges = []
    for _ in range(5):
        edge = clock.real - 300_000_000 + 17
        kernel.pulse(edge)
        edges.append(edge)
        ctx.tick()
    assert ctx.pulses == [e for e in edges]
    assert len(ctx.timecodes) == 5 and ctx.timecodes[-1].startswith("assert ") and ctx.timecodes[-1].endswith("#5")
    ctx.tick()  # no pulse this second
    assert ctx.counts["no_new_pulse"] == 2
    assert all(t == (0, 0, 0) for t in kernel.fetch_timeouts)
    st = drv.status()
    assert st["pulses"] == 5 and st["last_sequence"] == 5 and st["edge"] == "assert"
    assert st["device"].endswith("pps0")
    drv.close()
    n = len(kernel.calls)
    ctx.tick()  # the timer is gone
    assert len(kernel.calls) == n
    drv.close()


def test_missed_pulses_are_counted(kernel, tmp_path):
    drv, ctx = _driver(tmp_path)
    drv.open()
    kernel.pulse(ctx.clock.real - 1000)
    ctx.tick()
    kernel.pulse(ctx.clock.real - 900)
    kernel.pulse(ctx.clock.real - 800)
    kernel.pulse(ctx.clock.real - 700)  # three edges within one tick: two are lost
    ctx.tick()
    assert len(ctx.pulses) == 2
    assert ctx.counts["missed_pulse"] == 2 and drv.status()["missed"] == 2
    drv.close()


def test_sequence_wraps(kernel, tmp_path):
    kernel.assert_seq = 0xFFFFFFFE
    drv, ctx = _driver(tmp_path)
    drv.open()
    for _ in range(3):
        kernel.pulse(ctx.clock.real - 1000)
        ctx.tick()
    assert len(ctx.pulses) == 3 and "missed_pulse" not in ctx.counts
    drv.close()


def test_stale_edge_at_start_is_not_a_pulse(kernel, tmp_path):
    kernel.pulse(pf.T0 - 600 * NS)  # pulses stopped ten minutes ago
    drv, ctx = _driver(tmp_path)
    drv.open()
    ctx.tick()
    ctx.tick()
    assert ctx.pulses == [] and ctx.counts["stale_pulse"] == 1
    drv.close()


def test_edge_in_the_future_or_backwards_is_dropped(kernel, tmp_path):
    drv, ctx = _driver(tmp_path)
    drv.open()
    kernel.pulse(ctx.clock.real + 5 * NS)
    ctx.tick()
    kernel.pulse(ctx.clock.real + 900_000_000)  # 100 ms before the tick reads it
    ctx.tick()
    last = ctx.pulses[-1]
    kernel.pulse(last - 10)  # older than the last one: the clock was stepped
    ctx.tick()
    assert ctx.pulses == [last]
    assert ctx.counts["bad_timestamp"] == 2
    drv.close()


def test_flag2_uses_the_clear_edge(kernel, tmp_path):
    kernel.capabilities |= hwpps.PPS_CAPTURECLEAR
    drv, ctx = _driver(tmp_path, flag2=True)
    drv.open()
    assert kernel.mode & hwpps.PPS_CAPTURECLEAR
    kernel.pulse(ctx.clock.real - 900_000_000, "assert")
    kernel.pulse(ctx.clock.real - 800_000_000, "clear")
    ctx.tick()
    assert ctx.pulses == [ctx.clock.real - NS - 800_000_000]
    assert ctx.timecodes[0].startswith("clear ")
    drv.close()


def test_flag3_binds_hardpps_and_unbinds_on_close(kernel, tmp_path):
    drv, ctx = _driver(tmp_path, flag3=True)
    drv.open()
    assert kernel.bound_edge == hwpps.PPS_CAPTUREASSERT
    assert drv.status()["hardpps"] is True
    drv.close()
    assert kernel.bound_edge == 0


def test_flag3_without_privilege_still_runs(kernel, tmp_path):
    kernel.cap_sys_time = False
    drv, ctx = _driver(tmp_path, flag3=True)
    drv.open()
    assert "CAP_SYS_TIME" in drv.status()["hardpps_error"]
    assert ctx.counts["hardpps_bind_failed"] == 1
    kernel.pulse(ctx.clock.real - 10)
    ctx.tick()
    assert len(ctx.pulses) == 1
    drv.close()


def test_fetch_failure_is_a_fault(kernel, tmp_path):
    drv, ctx = _driver(tmp_path)
    drv.open()
    kernel.fail_fetch = 19  # ENODEV: unplugged
    ctx.tick()
    assert len(ctx.faults) == 1 and "fetch failed" in ctx.faults[0]
    drv.close()


def test_missing_device_raises_on_open(tmp_path):
    drv, _ctx = _driver(tmp_path, path=str(tmp_path / "pps5"))
    with pytest.raises(OSError, match="no such PPS device"):
        drv.open()
    assert drv.source is None
    drv.close()


def test_gpio_line_source(monkeypatch, tmp_path):
    gpio = pf.FakeGpio()
    gpio.add_chip("gpiochip4", "pinctrl-rp1", {18: "GPIO18"})
    gpio.install(monkeypatch, tmp_path)
    from stratum1.hw import gpio as hwgpio

    real_chip_paths = hwgpio.chip_paths
    monkeypatch.setattr(hwgpio, "chip_paths", lambda dev_dir="/dev": real_chip_paths(str(tmp_path)))
    drv, ctx = _driver(tmp_path, path="gpio:GPIO18", flag3=True)
    drv.open()
    req = gpio.chips[str(tmp_path / "gpiochip4")].requests[0]
    for i in range(3):
        req.push(pf.RISING, ctx.clock.real - 400_000_000 + i)
        ctx.tick()
    assert len(ctx.pulses) == 3
    st = drv.status()
    assert st["event_clock"] == "realtime" and "gpiochip4" in st["device"]
    assert "GPIO line" in st["hardpps_error"]  # flag3 is kernel PPS only
    drv.close()
    assert req.released
