"""PPS from a GPIO line through libgpiod v2 edge events, for kernels without ``pps-gpio``.

A line is named by its line name (``gpio:GPIO18``) or by chip label and offset or name
(``gpio:pinctrl-bcm2835:18``, ``gpio:pinctrl-rp1:GPIO18``), never by a bare ``gpiochipN``
number: the Raspberry Pi 5 kernels renumbered the chips. The kernel stamps every edge in its
interrupt handler and queues it; we read the queue from a timer, so reading late costs nothing.
"""

from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .pps import EDGE_ASSERT, EDGE_CLEAR, Edge, PpsError

if TYPE_CHECKING:
    from stratum1.clock import Clock

PREFIX = "gpio:"
CONSUMER = "stratum1-pps"
#: Kernel FIFO depth we ask for: a few seconds of pulses survive a stalled loop.
EVENT_BUFFER_SIZE = 16
#: Most events taken per fetch, so a line flooded with noise cannot hold the loop.
MAX_EVENTS_PER_FETCH = 64


@dataclass(frozen=True, slots=True)
class GpioLineSpec:
    """A parsed ``gpio:`` path. ``chip_label`` None means: search every chip for ``line``."""

    chip_label: str | None
    line: str

    @property
    def offset(self) -> int | None:
        return int(self.line) if self.line.isdigit() else None

    def __str__(self) -> str:
        return PREFIX + (f"{self.chip_label}:{self.line}" if self.chip_label else self.line)


def is_gpio_path(path: str) -> bool:
    return path.startswith(PREFIX)


def parse_gpio_path(path: str) -> GpioLineSpec:
    """Parse ``gpio:LINENAME`` or ``gpio:CHIPLABEL:OFFSET|LINENAME``; ValueError says why not."""
    if not is_gpio_path(path):
        raise ValueError(f"{path!r}: a GPIO line is written gpio:GPIO18 or gpio:CHIPLABEL:OFFSET")
    rest = path[len(PREFIX):]
    label, sep, line = rest.rpartition(":")
    if not sep:
        label, line = "", rest
    label, line = label.strip(), line.strip()
    if not line:
        raise ValueError(f"{path!r}: no line given (e.g. gpio:GPIO18)")
    chip_name = label.removeprefix("/dev/")
    if chip_name.startswith("gpiochip") and chip_name[len("gpiochip"):].isdigit():
        raise ValueError(
            f"{path!r}: gpiochip numbers change between kernels (the Raspberry Pi 5 renumbered "
            "them); name the chip by its label as `gpiodetect` shows it "
            "(gpio:pinctrl-bcm2835:18) or the line by name (gpio:GPIO18)"
        )
    if not label:
        if line.isdigit():
            raise ValueError(
                f"{path!r}: a bare offset needs its chip label (gpio:pinctrl-bcm2835:{line}); "
                "or use the line name (gpio:GPIO18)"
            )
        return GpioLineSpec(None, line)
    return GpioLineSpec(label, line)


def chip_paths(dev_dir: str = "/dev") -> list[str]:
    """GPIO character devices present, in name order."""
    import gpiod

    found = []
    for path in sorted(glob.glob(os.path.join(dev_dir, "gpiochip*"))):
        try:
            if gpiod.is_gpiochip_device(path):
                found.append(path)
        except OSError:
            continue
    return found


class GpioPps:
    """PPS edges of one GPIO line, stamped by the kernel; a PulseSource for the PPS driver."""

    def __init__(self, path: str, edge: str, clock: Clock, dev_dir: str = "/dev") -> None:
        if edge not in (EDGE_ASSERT, EDGE_CLEAR):
            raise ValueError(f"PPS edge must be {EDGE_ASSERT!r} or {EDGE_CLEAR!r}, not {edge!r}")
        self.spec = parse_gpio_path(path)
        self.edge = edge
        self.clock = clock
        self.dev_dir = dev_dir
        self.description = str(self.spec)
        self.chip_path: str | None = None
        self.offset: int | None = None
        self.event_clock = "realtime"
        #: Events whose timestamps came back on CLOCK_MONOTONIC and were converted (libgpiod
        #: Python bindings before 2.1.3 ignored event_clock; kernels before 5.11 lack REALTIME).
        self.converted = 0
        self._request: Any = None

    # -- finding the line -------------------------------------------------------------------
    def _resolve(self) -> tuple[str, int]:
        import gpiod

        paths = chip_paths(self.dev_dir)
        if not paths:
            raise PpsError(errno.ENOENT, f"{self.spec}: no GPIO chips under {self.dev_dir}")
        labels = []
        for path in paths:
            try:
                chip = gpiod.Chip(path)
            except OSError:
                continue
            try:
                label = chip.get_info().label
                labels.append(label)
                if self.spec.chip_label is not None and label != self.spec.chip_label:
                    continue
                try:
                    offset = chip.line_offset_from_id(self.spec.offset if self.spec.offset is not None else self.spec.line)
                except (OSError, ValueError):
                    if self.spec.chip_label is not None:
                        raise PpsError(
                            errno.ENOENT, f"{self.spec}: chip {label!r} has no line {self.spec.line!r}"
                        ) from None
                    continue
                return path, offset
            finally:
                chip.close()
        if self.spec.chip_label is not None:
            raise PpsError(
                errno.ENOENT,
                f"{self.spec}: no GPIO chip labelled {self.spec.chip_label!r} "
                f"(chips here: {', '.join(labels) or 'none'})",
            )
        raise PpsError(errno.ENOENT, f"{self.spec}: no GPIO line named {self.spec.line!r} on {', '.join(labels)}")

    # -- life cycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self._request is not None:
            return
        import gpiod
        from gpiod.line import Clock, Direction
        from gpiod.line import Edge as LineEdge

        path, offset = self._resolve()
        edge = LineEdge.RISING if self.edge == EDGE_ASSERT else LineEdge.FALLING
        chip = gpiod.Chip(path)
        try:
            try:
                self._request = self._request_line(chip, offset, edge, Clock.REALTIME, Direction.INPUT)
                self.event_clock = "realtime"
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                # Kernels before 5.11 know only the monotonic event clock: convert instead.
                self._request = self._request_line(chip, offset, edge, Clock.MONOTONIC, Direction.INPUT)
                self.event_clock = "monotonic"
        except OSError as exc:
            raise PpsError(
                exc.errno or errno.EIO,
                f"{self.spec}: cannot request line {offset} of {path}: {exc}"
                + (" (is the line used by pps-gpio or another program?)" if exc.errno == errno.EBUSY else ""),
            ) from exc
        finally:
            chip.close()
        self.chip_path, self.offset = path, offset
        self.description = f"{self.spec} ({path} line {offset})"

    def _request_line(self, chip: Any, offset: int, edge: Any, clock: Any, direction: Any) -> Any:
        import gpiod

        settings = gpiod.LineSettings(direction=direction, edge_detection=edge, event_clock=clock)
        return chip.request_lines(
            config={offset: settings}, consumer=CONSUMER, event_buffer_size=EVENT_BUFFER_SIZE
        )

    def close(self) -> None:
        req, self._request = self._request, None
        if req is not None:
            try:
                req.release()
            except OSError:
                pass

    # -- reading ----------------------------------------------------------------------------
    def _to_realtime(self, timestamp_ns: int) -> int:
        """The event's time on CLOCK_REALTIME, converting a CLOCK_MONOTONIC stamp if needed."""
        m1 = self.clock.monotonic_ns()
        real = self.clock.now_ns()
        m2 = self.clock.monotonic_ns()
        mono = (m1 + m2) // 2
        # Whichever clock the stamp lies nearer to is the one it was taken on. The offset
        # between the two changes only when the clock is stepped, so converting is exact.
        if abs(timestamp_ns - mono) < abs(timestamp_ns - real):
            self.converted += 1
            return timestamp_ns + (real - mono)
        return timestamp_ns

    def fetch(self) -> list[Edge]:
        if self._request is None:
            raise PpsError(errno.EBADF, f"{self.spec}: GPIO line is not open")
        import gpiod

        wanted = (
            gpiod.EdgeEvent.Type.RISING_EDGE if self.edge == EDGE_ASSERT else gpiod.EdgeEvent.Type.FALLING_EDGE
        )
        edges: list[Edge] = []
        taken = 0
        while taken < MAX_EVENTS_PER_FETCH and self._request.wait_edge_events(0):
            events = self._request.read_edge_events(max_events=EVENT_BUFFER_SIZE)
            if not events:
                break
            taken += len(events)
            for ev in events:
                if ev.event_type != wanted:
                    continue
                edges.append(Edge(ev.line_seqno, self._to_realtime(ev.timestamp_ns)))
        return edges
