"""Reopen a faulted refclock unit as soon as its device reappears (udev add events via pyudev).

Without pyudev or udevd, nothing arrives here and units simply retry on their back-off timer.
The monitor's descriptor is served by the daemon's EventLoop; no thread is started.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..eventloop import EventLoop

log = logging.getLogger(__name__)

SUBSYSTEMS = ("tty", "pps", "gpio", "gnss")


class Reopenable(Protocol):
    def retry_now(self) -> None: ...

    def device(self) -> str: ...


class HotplugWatcher:
    """Maps udev ``add``/``change`` events on a device node (or one of its links) to the units
    that open that path, and calls their ``retry_now()``."""

    def __init__(self, loop: EventLoop, monitor: Any = None) -> None:
        self.loop = loop
        self._units: list[Reopenable] = []
        self._monitor = monitor
        self.events = 0

    def watch(self, unit: Reopenable) -> None:
        self._units.append(unit)

    def start(self) -> bool:
        """Begin listening; False when udev is unavailable (back-off retries still work)."""
        if self._monitor is None:
            try:
                import pyudev

                monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
                for subsystem in SUBSYSTEMS:
                    monitor.filter_by(subsystem)
                monitor.start()
            except Exception as exc:
                log.info("no udev hotplug events (%s); devices are retried on a timer", exc)
                return False
            self._monitor = monitor
        self.loop.add_reader(self._monitor.fileno(), self._readable)
        return True

    def stop(self) -> None:
        if self._monitor is not None:
            self.loop.remove_reader(self._monitor.fileno())

    def _readable(self) -> None:
        # drain what is queued; poll(0) never blocks
        for _ in range(64):
            device = self._monitor.poll(timeout=0)
            if device is None:
                return
            self.handle(device)

    def handle(self, device: Any) -> None:
        """One udev event (anything with ``action``, ``device_node``, ``device_links``)."""
        self.events += 1
        if getattr(device, "action", None) not in ("add", "change", "bind"):
            return
        names = {device.device_node} | set(getattr(device, "device_links", ()) or ())
        names.discard(None)
        if not names:
            return
        real = {os.path.realpath(n) for n in names}
        for unit in self._units:
            path = unit.device()
            if not path:
                continue
            if path in names or os.path.realpath(path) in real:
                log.info("%s appeared: reopening", path)
                unit.retry_now()
