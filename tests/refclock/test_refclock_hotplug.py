import os
from types import SimpleNamespace

from stratum1.refclock.hotplug import HotplugWatcher
from stratum1.refclock.testing import VirtualLoop


class Unit:
    def __init__(self, path):
        self.path = path
        self.retries = 0

    def device(self):
        return self.path

    def retry_now(self):
        self.retries += 1


class FakeMonitor:
    def __init__(self, events):
        self.events = list(events)
        self.r, self.w = os.pipe()

    def fileno(self):
        return self.r

    def poll(self, timeout=None):
        return self.events.pop(0) if self.events else None


def ev(action, node, links=()):
    return SimpleNamespace(action=action, device_node=node, device_links=list(links))


def test_add_event_on_node_or_link_retries_matching_unit_only():
    gps = Unit("/dev/serial/by-id/usb-u-blox-if00")
    pps = Unit("/dev/pps0")
    monitor = FakeMonitor(
        [
            ev("add", "/dev/ttyACM0", ["/dev/serial/by-id/usb-u-blox-if00"]),
            ev("remove", "/dev/pps0"),
            ev("add", "/dev/ttyUSB3"),
        ]
    )
    loop = VirtualLoop()
    w = HotplugWatcher(loop, monitor)
    w.watch(gps)
    w.watch(pps)
    assert w.start()
    loop.readers[monitor.fileno()]()
    assert (gps.retries, pps.retries, w.events) == (1, 0, 3)
    w.stop()
    assert loop.readers == {}
    os.close(monitor.r)
    os.close(monitor.w)
