"""Mitigation rules applied after selection: the ``prefer`` peer and the PPS peer.

A ``prefer`` survivor becomes the system peer and its own offset and jitter are used (no
combining). A PPS source that survived the intersection becomes the PPS peer (tally ``o``) and
disciplines the clock only while the prefer peer, or without one the synchronised system, is
within ``pps_gate`` (128 ms) of it; otherwise selection falls back to the other sources.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .association import SEL_CANDIDATE, SEL_PPSPEER, SEL_SYSPEER
from .select import ClockHop, Selection

#: The prefer peer (or system) must be this close for PPS to take over (s).
PPS_GATE = 0.128


@dataclass(frozen=True, slots=True)
class Mitigated:
    """The selection after mitigation: who disciplines the clock and with what."""

    selection: Selection
    system_peer_key: object | None  # the association that disciplines the clock
    pps_active: bool = False
    prefer_key: object | None = None


def apply_prefer(selection: Selection, clockhop: ClockHop | None = None) -> Selection:
    """If a ``prefer`` source survived clustering it becomes the system peer, with its own
    offset and jitter rather than the combined ones."""
    prefer = next((c for c in selection.survivors if c.prefer), None)
    if prefer is None or selection.system_peer is None:
        return selection
    if clockhop is not None:
        clockhop.threshold = 0.0
    codes = dict(selection.codes)
    if selection.system_peer.key != prefer.key:
        codes[selection.system_peer.key] = SEL_CANDIDATE
    codes[prefer.key] = SEL_SYSPEER
    return replace(
        selection,
        codes=codes,
        system_peer=prefer,
        offset=prefer.offset,
        jitter=prefer.jitter,
        distance=prefer.distance,
    )


def mitigate(
    selection: Selection,
    *,
    minsane: int,
    was_synchronized: bool,
    pps_gate: float = PPS_GATE,
    clockhop: ClockHop | None = None,
) -> Mitigated:
    """Apply the prefer rule, then the PPS rule.

    PPS takes over when a PPS truechimer exists and either a prefer survivor is within
    ``pps_gate``, or (no prefer survivor) the combined system offset is, or (no survivors at
    all) ``minsane`` is 0 and the clock was synchronised before. The prefer peer keeps its
    ``*``; the PPS source gets ``o`` and supplies offset, jitter and the system variables.
    """
    sel = apply_prefer(selection, clockhop)
    prefer = next((c for c in sel.survivors if c.prefer), None)
    pps = sel.pps_candidate
    if pps is not None:
        if prefer is not None:
            usable = abs(prefer.offset) < pps_gate
        elif sel.system_peer is not None:
            usable = abs(sel.offset) < pps_gate
        else:
            usable = minsane == 0 and was_synchronized
        if usable:
            if clockhop is not None:
                clockhop.threshold = 0.0
            codes = dict(sel.codes)
            codes[pps.key] = SEL_PPSPEER
            sel = replace(
                sel, codes=codes, offset=pps.offset, jitter=pps.jitter, distance=pps.distance
            )
            return Mitigated(sel, pps.key, True, prefer.key if prefer else None)
    key = sel.system_peer.key if sel.system_peer is not None else None
    return Mitigated(sel, key, False, prefer.key if prefer else None)
