"""Is what a driver needs present on this machine? (libraries, device nodes, the gpsd socket)

Used by ``stratum1 drivers list``. Every probe only looks (imports metadata, globs /dev, one
short connect to gpsd on loopback); nothing is opened for I/O.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True, slots=True)
class Presence:
    present: bool
    detail: str


#: What each requirement key means, for humans.
REQUIREMENTS: dict[str, str] = {
    "pyserial": "pyserial (Python serial ports)",
    "pyudev": "pyudev (device discovery and hotplug)",
    "libgpiod": "gpiod >= 2 (libgpiod v2 bindings, GPIO PPS)",
    "pps": "a kernel PPS device /dev/pps*",
    "gpiochip": "a GPIO chip /dev/gpiochip*",
    "gpsd": "gpsd listening on localhost:2947",
    "sysv-shm": "System V shared memory",
    "serial-device": "a serial device (/dev/tty{S,USB,ACM,AMA}*, /dev/gps*)",
}

_SERIAL_GLOBS = ("tty[SU]*[0-9]", "ttyUSB*", "ttyACM*", "ttyAMA*", "serial[0-9]*", "gps[0-9]*")


@dataclass
class Prober:
    """The probes, with the file system root and the gpsd address injectable for tests."""

    dev: str = "/dev"
    proc: str = "/proc"
    gpsd_address: tuple[str, int] = ("127.0.0.1", 2947)
    gpsd_timeout: float = 0.2
    find_spec: Callable[[str], object] = importlib.util.find_spec
    _cache: dict[str, Presence] = field(default_factory=dict)

    def check(self, key: str) -> Presence:
        if key not in self._cache:
            probe = getattr(self, "_probe_" + key.replace("-", "_"), None)
            if probe is None:
                self._cache[key] = Presence(False, f"unknown requirement {key!r}")
            else:
                try:
                    self._cache[key] = probe()
                except Exception as exc:  # a probe must never break the report
                    self._cache[key] = Presence(False, f"probe failed: {exc}")
        return self._cache[key]

    def check_any(self, alternatives: str) -> Presence:
        """``"pps|gpiochip"``: present when any alternative is (the first present one wins)."""
        results = [(k, self.check(k)) for k in alternatives.split("|")]
        for _key, p in results:
            if p.present:
                return p
        if len(results) == 1:
            return results[0][1]
        return Presence(False, " and ".join(p.detail for _, p in results))

    def check_all(self, keys: tuple[str, ...] | list[str]) -> Presence:
        """All of ``keys`` together (each may be ``a|b`` alternatives): present only if each
        is; details joined."""
        results = [(k, self.check_any(k)) for k in keys]
        if not results:
            return Presence(True, "nothing needed")
        missing = [f"{k}: {p.detail}" for k, p in results if not p.present]
        if missing:
            return Presence(False, "; ".join(missing))
        return Presence(True, "; ".join(p.detail for _, p in results))

    # -- the probes -------------------------------------------------------------------------
    def _module(self, module: str, dist: str) -> Presence:
        if self.find_spec(module) is None:
            return Presence(False, f"{dist} not installed")
        try:
            return Presence(True, f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            return Presence(True, dist)

    def _probe_pyserial(self) -> Presence:
        return self._module("serial", "pyserial")

    def _probe_pyudev(self) -> Presence:
        return self._module("pyudev", "pyudev")

    def _probe_libgpiod(self) -> Presence:
        found = self._module("gpiod", "gpiod")
        if found.present and found.detail.startswith("gpiod 1."):
            return Presence(False, f"{found.detail}: version 2 or later needed")
        return found

    def _glob(self, *patterns: str) -> list[str]:
        out: list[str] = []
        for pattern in patterns:
            out.extend(glob.glob(os.path.join(self.dev, pattern)))
        return sorted(set(out))

    def _nodes(self, what: str, *patterns: str) -> Presence:
        nodes = self._glob(*patterns)
        if not nodes:
            return Presence(False, f"no {what}")
        return Presence(True, ", ".join(nodes))

    def _probe_pps(self) -> Presence:
        return self._nodes("/dev/pps*", "pps[0-9]*")

    def _probe_gpiochip(self) -> Presence:
        return self._nodes("/dev/gpiochip*", "gpiochip[0-9]*")

    def _probe_serial_device(self) -> Presence:
        return self._nodes("serial device", *_SERIAL_GLOBS)

    def _probe_sysv_shm(self) -> Presence:
        if os.path.exists(os.path.join(self.proc, "sysvipc", "shm")):
            return Presence(True, "available")
        return Presence(False, "no /proc/sysvipc/shm (kernel without SysV IPC?)")

    def _probe_gpsd(self) -> Presence:
        host, port = self.gpsd_address
        try:
            with socket.create_connection((host, port), timeout=self.gpsd_timeout):
                return Presence(True, f"listening on {host}:{port}")
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            return Presence(False, f"not reachable on {host}:{port} ({reason})")
