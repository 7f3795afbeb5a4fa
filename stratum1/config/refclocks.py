"""Turns refclock declarations and fudge lines into RefclockConfigs, checked against the driver
registry: the driver must exist, and every option and fudge field must apply to it."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..refclock import registry
from ..refclock.driver import RefclockDriver
from .builder import Builder, RefclockDecl
from .model import RefclockConfig
from .retired import missing_driver_message

#: Fields every refclock takes whatever its driver (selection and polling, and the
#: framework-level sample dispersion floor).
_UNIVERSAL = frozenset({"prefer", "noselect", "true", "iburst", "minpoll", "maxpoll",
                        "minjitter", "stratum", "refid"})
#: Driver options (vs. fudge fields): the driver's ``options`` declares which it takes.
_DRIVER_OPTIONS = frozenset({"path", "ppspath", "baud", "mode", "subtype"})
_FLAGS = ("flag1", "flag2", "flag3", "flag4")


def _check_fields(b: Builder, decl: RefclockDecl, cls: type[RefclockDriver]) -> dict[str, Any]:
    """The fields of ``decl`` that apply to ``cls``; an error for each one that does not."""
    kept: dict[str, Any] = {}
    address = f"127.127.{decl.type}.{decl.unit}"
    for key, value in decl.fields.items():
        if key in _UNIVERSAL:
            pass
        elif key in _DRIVER_OPTIONS:
            takes = key in cls.options or (key == "mode" and cls.mode_range is not None)
            if not takes:
                b.error(decl.location, f"{key} does not apply to driver {cls.name} ({address})",
                        decl.directive)
                continue
            if key == "mode" and cls.mode_range is not None:
                lo, hi = cls.mode_range
                if not lo <= value <= hi:
                    b.error(decl.location, f"mode {value} is out of range {lo}..{hi} for driver "
                            f"{cls.name} ({address})", decl.directive)
                    continue
        elif not cls.accepts_fudge(key):
            b.error(decl.location, f"{key} does not apply to driver {cls.name} ({address}); it uses "
                    f"{_uses(cls)}", decl.directive)
            continue
        if key == "refid" and len(value) > 4:
            b.warning(decl.location, f"refid {value!r} is longer than 4 characters; using "
                      f"{value[:4]!r}", decl.directive)
            value = value[:4]
        kept[key] = value
    return kept


def _uses(cls: type[RefclockDriver]) -> str:
    fields = sorted(set(cls.fudge_meanings) | {"stratum", "refid"})
    return ", ".join(fields)


def build_refclocks(b: Builder) -> tuple[RefclockConfig, ...]:
    """Merge declarations and fudges (a fudge may come before or after its refclock line; its
    fields override the line's own), reporting every problem."""
    decls: dict[tuple[int, int], RefclockDecl] = {}
    fudges: list[RefclockDecl] = []
    for decl in b.refclocks:
        key = (decl.type, decl.unit)
        if decl.is_fudge:
            fudges.append(decl)
        elif key in decls:
            b.error(decl.location, f"refclock 127.127.{key[0]}.{key[1]} is configured twice "
                    f"(first at {decls[key].location})", decl.directive)
        else:
            decls[key] = decl

    drivers: dict[tuple[int, int], type[RefclockDriver] | None] = {}
    for key, decl in decls.items():
        cls = registry.lookup(decl.type)
        drivers[key] = cls
        if cls is None:
            b.error(decl.location, f"127.127.{key[0]}.{key[1]}: {missing_driver_message(key[0])}",
                    decl.directive)
        elif decl.unit > cls.max_unit:
            b.error(decl.location, f"unit {decl.unit} is out of range 0..{cls.max_unit} for "
                    f"driver {cls.name} (127.127.{key[0]}.{key[1]})", decl.directive)
            drivers[key] = None

    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for key, decl in decls.items():
        cls = drivers[key]
        if cls is not None:
            merged[key] = _check_fields(b, decl, cls)
    for fudge in fudges:
        key = (fudge.type, fudge.unit)
        if key not in decls:
            b.error(fudge.location, f"127.127.{key[0]}.{key[1]} has no server or refclock line",
                    fudge.directive)
            continue
        cls = drivers[key]
        if cls is not None:
            merged[key].update(_check_fields(b, fudge, cls))

    out: list[RefclockConfig] = []
    for key, fields in merged.items():
        cls = drivers[key]
        assert cls is not None
        out.append(dataclasses.replace(
            RefclockConfig(type=key[0], unit=key[1], driver=cls.name,
                           location=decls[key].location),
            **{k: (bool(v) if k in _FLAGS else v) for k, v in fields.items()},
        ))
    return tuple(out)
