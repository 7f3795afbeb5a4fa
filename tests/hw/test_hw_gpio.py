"""Tests for hw/gpio.py: line naming and GpioPps against a fake libgpiod v2 chip."""

from __future__ import annotations

import errno

import gpiod
import pps_fakes
import pytest
from gpiod.line import Clock, Direction, Edge
from stratum1.hw import gpio as hwgpio
from stratum1.hw.pps import EDGE_ASSERT, EDGE_CLEAR, PpsError
from stratum1.hw.pps import Edge as PpsEdge

NS = pps_fakes.NS


@pytest.mark.parametrize(
    "path, label, line",
    [
        ("gpio:GPIO18", None, "GPIO18"),
        ("gpio:pinctrl-bcm2835:18", "pinctrl-bcm2835", "18"),
        ("gpio:pinctrl-rp1:GPIO18", "pinctrl-rp1", "GPIO18"),
        ("gpio:gpio-brcmstb@107d508500:4", "gpio-brcmstb@107d508500", "4"),
    ],
)
def test_parse(path, label, line):
    spec = hwgpio.parse_gpio_path(path)
    assert (spec.chip_label, spec.line) == (label, line)
    assert str(spec) == path


@pytest.mark.parametrize(
    "path, message",
    [
        ("gpio:gpiochip0:18", "gpiochip numbers change"),
        ("gpio:/dev/gpiochip4:18", "gpiochip numbers change"),
        ("gpio:18", "bare offset needs its chip label"),
        ("gpio:", "no line"),
        ("gpio:pinctrl-bcm2835:", "no line"),
        ("/dev/pps0", "gpio:GPIO18"),
    ],
)
def test_parse_rejects(path, message):
    with pytest.raises(ValueError, match=message):
        hwgpio.parse_gpio_path(path)


@pytest.fixture
def gpio(monkeypatch, tmp_path):
    fake = pps_fakes.FakeGpio()
    fake.add_chip("gpiochip0", "pinctrl-bcm2835", {17: "GPIO17", 18: "GPIO18"})
    fake.add_chip("gpiochip1", "raspberrypi-exp-gpio", {2: "CAM_GPIO"}, num_lines=8)
    fake.install(monkeypatch, tmp_path)
    return fake


def _open(tmp_path, path="gpio:GPIO18", edge=EDGE_ASSERT, clock=None):
    src = hwgpio.GpioPps(path, edge, clock or pps_fakes.FakeClock(), dev_dir=str(tmp_path))
    src.open()
    return src


def test_chip_paths(gpio, tmp_path):
    (tmp_path / "gpiochip9").touch()  # not a GPIO device per libgpiod
    assert hwgpio.chip_paths(str(tmp_path)) == [str(tmp_path / "gpiochip0"), str(tmp_path / "gpiochip1")]


def test_request_by_line_name_asks_for_realtime_rising_input(gpio, tmp_path):
    src = _open(tmp_path)
    chip = gpio.chips[str(tmp_path / "gpiochip0")]
    (req,) = chip.requests
    assert req.offset == 18
    assert req.consumer == hwgpio.CONSUMER
    assert req.settings.edge_detection == Edge.RISING
    assert req.settings.event_clock == Clock.REALTIME
    assert req.settings.direction == Direction.INPUT
    assert req.event_buffer_size == hwgpio.EVENT_BUFFER_SIZE
    assert src.event_clock == "realtime"
    assert "line 18" in src.description
    assert gpio.open_chips == 0  # chips are closed once the line is requested
    src.close()
    assert req.released
    src.close()


def test_request_by_label_and_offset_or_name(gpio, tmp_path):
    src = _open(tmp_path, "gpio:raspberrypi-exp-gpio:2", EDGE_CLEAR)
    (req,) = gpio.chips[str(tmp_path / "gpiochip1")].requests
    assert req.offset == 2 and req.settings.edge_detection == Edge.FALLING
    src.close()
    src = _open(tmp_path, "gpio:pinctrl-bcm2835:GPIO17")
    assert gpio.chips[str(tmp_path / "gpiochip0")].requests[-1].offset == 17
    src.close()


@pytest.mark.parametrize(
    "path, message",
    [
        ("gpio:GPIO99", "no GPIO line named 'GPIO99'"),
        ("gpio:nosuchchip:3", "no GPIO chip labelled 'nosuchchip'.*pinctrl-bcm2835"),
        ("gpio:raspberrypi-exp-gpio:GPIO18", "has no line 'GPIO18'"),
        ("gpio:raspberrypi-exp-gpio:9", "has no line '9'"),
    ],
)
def test_resolution_errors(gpio, tmp_path, path, message):
    with pytest.raises(PpsError, match=message):
        _open(tmp_path, path)
    assert gpio.open_chips == 0


def test_busy_line_error_mentions_pps_gpio(gpio, tmp_path):
    gpio.chips[str(tmp_path / "gpiochip0")].busy.add(18)
    with pytest.raises(PpsError, match="pps-gpio") as info:
        _open(tmp_path)
    assert info.value.errno == errno.EBUSY


def test_no_chips(monkeypatch, tmp_path):
    pps_fakes.FakeGpio().install(monkeypatch, tmp_path)
    with pytest.raises(PpsError, match="no GPIO chips"):
        _open(tmp_path)


def test_fetch_returns_every_queued_edge_in_order(gpio, tmp_path):
    clock = pps_fakes.FakeClock()
    src = _open(tmp_path, clock=clock)
    req = gpio.chips[str(tmp_path / "gpiochip0")].requests[0]
    assert src.fetch() == []
    t = clock.real
    req.push(pps_fakes.RISING, t - 2 * NS)
    req.push(pps_fakes.RISING, t - 1 * NS)
    assert src.fetch() == [PpsEdge(1, t - 2 * NS), PpsEdge(2, t - NS)]
    assert src.fetch() == []
    assert src.converted == 0
    src.close()


def test_fetch_ignores_the_other_edge(gpio, tmp_path):
    clock = pps_fakes.FakeClock()
    src = _open(tmp_path, clock=clock)
    req = gpio.chips[str(tmp_path / "gpiochip0")].requests[0]
    req.push(pps_fakes.FALLING, clock.real - 500_000_000)
    req.push(pps_fakes.RISING, clock.real - 100)
    assert src.fetch() == [PpsEdge(2, clock.real - 100)]
    src.close()


def test_monotonic_stamps_are_converted(gpio, tmp_path):
    # libgpiod's Python bindings before 2.1.3 ignored event_clock: stamps come on MONOTONIC.
    clock = pps_fakes.FakeClock(real_ns=1_700_000_000 * NS + 123, mono_ns=5_000 * NS)
    src = _open(tmp_path, clock=clock)
    req = gpio.chips[str(tmp_path / "gpiochip0")].requests[0]
    req.push(pps_fakes.RISING, clock.mono - 250_000_000)
    assert src.fetch() == [PpsEdge(1, clock.real - 250_000_000)]
    assert src.converted == 1
    src.close()


def test_kernel_without_realtime_falls_back_to_monotonic(monkeypatch, tmp_path):
    fake = pps_fakes.FakeGpio()
    fake.add_chip("gpiochip0", "pinctrl-bcm2835", {18: "GPIO18"}, realtime_supported=False)
    fake.install(monkeypatch, tmp_path)
    clock = pps_fakes.FakeClock()
    src = _open(tmp_path, clock=clock)
    assert src.event_clock == "monotonic"
    req = fake.chips[str(tmp_path / "gpiochip0")].requests[-1]
    assert req.settings.event_clock == Clock.MONOTONIC
    req.push(pps_fakes.RISING, clock.mono - 1000)
    assert src.fetch() == [PpsEdge(1, clock.real - 1000)]
    src.close()


def test_fetch_is_bounded_on_a_noisy_line(gpio, tmp_path):
    clock = pps_fakes.FakeClock()
    src = _open(tmp_path, clock=clock)
    req = gpio.chips[str(tmp_path / "gpiochip0")].requests[0]
    req.event_buffer_size = 1000
    for i in range(200):
        req.push(pps_fakes.RISING, clock.real - 1000 + i)
    assert len(src.fetch()) == hwgpio.MAX_EVENTS_PER_FETCH
    src.close()


def test_fetch_after_close_is_an_error(gpio, tmp_path):
    src = _open(tmp_path)
    src.close()
    with pytest.raises(PpsError):
        src.fetch()


def test_fake_matches_the_installed_gpiod_api():
    # The fake's methods must exist with these names on the real v2 classes.
    for name in ("wait_edge_events", "read_edge_events", "release", "fileno"):
        assert hasattr(gpiod.LineRequest, name)
    for name in ("get_info", "line_offset_from_id", "request_lines", "close"):
        assert hasattr(gpiod.Chip, name)
    ev = gpiod.EdgeEvent(pps_fakes.RISING, 5, 18, 1, 1)
    assert ev.event_type == gpiod.EdgeEvent.Type.RISING_EDGE
    assert {"timestamp_ns", "line_offset", "global_seqno", "line_seqno"} <= set(vars(type(ev))["__dataclass_fields__"])
