"""The driver registry: type numbers and names to driver classes.

Filled from the package's own driver modules and from the ``stratum1.drivers`` entry-point
group, so a third party can ship a driver as its own package.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points

from .driver import RefclockDriver

log = logging.getLogger(__name__)

#: The package's own driver modules that must always load (under ``stratum1.drivers``); every
#: other module found in that package is loaded too, and a broken one only logs a warning.
BUILTIN_MODULES: tuple[str, ...] = ("local", "sim")

ENTRY_POINT_GROUP = "stratum1.drivers"

_by_type: dict[int, type[RefclockDriver]] = {}
_by_name: dict[str, type[RefclockDriver]] = {}
_loaded = False


def register(cls: type[RefclockDriver]) -> type[RefclockDriver]:
    """Register a driver class (usable as a class decorator). Later registrations of the same
    type or name replace earlier ones, so a plug-in can override a built-in driver."""
    _by_type[cls.type] = cls
    _by_name[cls.name.lower()] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"stratum1.drivers.{mod}")
    import stratum1.drivers as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name in BUILTIN_MODULES or info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"stratum1.drivers.{info.name}")
        except Exception as exc:  # one broken driver module must not take the others down
            log.warning("driver module %s failed to load: %s", info.name, exc)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not stop the daemon
            log.warning("driver plug-in %s failed to load: %s", ep.name, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, RefclockDriver):
            register(obj)


def lookup(key: int | str) -> type[RefclockDriver] | None:
    """The driver class for a type number or an ntpsec name (case-insensitive), or None."""
    _load()
    if isinstance(key, int):
        return _by_type.get(key)
    return _by_name.get(key.lower())


def all_drivers() -> list[type[RefclockDriver]]:
    """Every registered driver, by type number."""
    _load()
    return [_by_type[t] for t in sorted(_by_type)]
