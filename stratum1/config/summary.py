"""The readable summary of a Config that ``stratum1 config check`` prints."""

from __future__ import annotations

import ipaddress
import socket

from .model import AssociationConfig, Config, RefclockConfig, RestrictEntry

_FAMILY = {socket.AF_INET: "-4 ", socket.AF_INET6: "-6 "}


def _qualifier(family: int | None, address: str | None) -> str:
    """The -4/-6 a user wrote (or would write): not shown for literal addresses."""
    if address is not None:
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
            return ""
        except ValueError:
            pass
    return _FAMILY.get(family or 0, "")


def _refclock(rc: RefclockConfig) -> str:
    parts = [f"{rc.address} {rc.driver}({rc.unit})"]
    for name in ("mode", "path", "ppspath", "baud", "subtype", "time1", "time2", "stratum",
                 "refid", "minjitter", "minpoll", "maxpoll"):
        value = getattr(rc, name)
        if value is not None:
            parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    parts += [f"{f} {int(v)}" for f in ("flag1", "flag2", "flag3", "flag4")
              if (v := getattr(rc, f)) is not None]
    parts += [f for f in ("prefer", "noselect", "true", "iburst") if getattr(rc, f)]
    return " ".join(parts)


def _association(a: AssociationConfig) -> str:
    parts = [f"{a.kind} {_qualifier(a.family, a.host)}{a.host}"]
    parts += [f for f in ("iburst", "burst", "prefer", "noselect", "true", "xleave", "preempt",
                          "nts") if getattr(a, f)]
    if (a.minpoll, a.maxpoll) != (6, 10):
        parts.append(f"poll {a.minpoll}..{a.maxpoll}")
    for name in ("version", "key", "ttl", "mode"):
        value = getattr(a, name)
        if value is not None and not (name == "version" and value == 4):
            parts.append(f"{name} {value}")
    return " ".join(parts)


def _restrict(r: RestrictEntry) -> str:
    if r.source:
        target = "source"
    elif r.address is None:
        target = "default"
    else:
        target = r.address + (f" mask {r.mask}" if r.mask else "")
    flags = " ".join(sorted(r.flags)) or "(no restrictions)"
    return f"{_qualifier(r.family, r.address)}{target}: {flags}"


def summarize(config: Config) -> str:
    """Several lines: sources, access control, files, and the settings that differ from the
    defaults."""
    lines: list[str] = []
    files = ", ".join(config.source_files) or "(none)"
    lines.append(f"configuration read from {files}")
    lines.append(f"reference clocks: {len(config.refclocks)}")
    lines += [f"  {_refclock(rc)}" for rc in config.refclocks]
    lines.append(f"network sources: {len(config.associations)}")
    lines += [f"  {_association(a)}" for a in config.associations]
    if not config.refclocks and not config.associations:
        lines.append("  warning: no time sources configured")
    lines.append(f"access control: {len(config.restrict)} restrict lines")
    lines += [f"  {_restrict(r)}" for r in config.restrict]
    for name in ("driftfile", "leapfile", "logfile", "pidfile", "statsdir", "keys", "keysdir"):
        value = getattr(config, name)
        if value is not None:
            lines.append(f"{name}: {value}")
    if config.trustedkeys:
        lines.append(f"trusted keys: {_ranges(sorted(config.trustedkeys))}")
    if config.controlkey is not None:
        lines.append(f"control key: {config.controlkey}")
    enabled = [fg.name for fg in config.filegens if fg.enabled]
    if enabled:
        lines.append(f"statistics: {' '.join(enabled)}")
    lines.append(f"enabled: {' '.join(sorted(config.enabled))}")
    tos = config.tos
    if tos.orphan < 16:
        lines.append(f"orphan mode at stratum {tos.orphan}")
    lines.append(f"selection: minclock {tos.minclock} minsane {tos.minsane} maxclock "
                 f"{tos.maxclock} maxdist {tos.maxdist:g}")
    t = config.tinker
    lines.append(f"discipline: step {t.step:g} s, stepout {t.stepout:g} s, panic {t.panic:g} s")
    for rule in config.interfaces:
        target = rule.value or rule.match
        if rule.prefixlen is not None:
            target += f"/{rule.prefixlen}"
        lines.append(f"interface {rule.action} {target}")
    return "\n".join(lines) + "\n"


def _ranges(keys: list[int]) -> str:
    out: list[str] = []
    start = prev = keys[0]
    for k in [*keys[1:], None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return " ".join(out)
