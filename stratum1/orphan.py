"""Orphan mode (``tos orphan N``): who is the orphan parent when no source below stratum N is
left, and the system variables an orphan parent shows.

Among sources at the orphan stratum the preference is the lowest root delay; equal root delays
(orphan parents all show 0) are broken by the lower address refid, and a source is only taken
if it beats this host's own metric, so two parents can never adopt each other.
"""

from __future__ import annotations

from .association import Association, address_refid
from .sample import LEAP_NONE
from .snapshot import SystemSnapshot

#: Refid an orphan parent shows (the loopback address 127.0.0.1).
ORPHAN_REFID = bytes([127, 0, 0, 1])
_NO_ADDRESS = 0xFFFFFFFF

OrphanMetric = tuple[float, int]


def local_metric(local_address: str | None) -> OrphanMetric:
    """This host's metric as an orphan parent: root delay 0 and its own address refid."""
    if local_address is None:
        return (0.0, _NO_ADDRESS)
    return (0.0, int.from_bytes(address_refid(local_address), "big"))


def peer_metric(a: Association) -> OrphanMetric:
    """An orphan-stratum source's metric: its root delay, then its address refid."""
    addr = int.from_bytes(address_refid(a.address), "big") if a.address else _NO_ADDRESS
    return (a.root_delay, addr)


def pick_orphan_parent(sources: list[Association], local_address: str | None) -> Association | None:
    """The orphan-stratum source this host should follow, or None if it is itself a parent."""
    mine = local_metric(local_address)
    best: Association | None = None
    best_metric = mine
    for a in sources:
        m = peer_metric(a)
        if m < best_metric:
            best, best_metric = a, m
    return best


def orphan_parent_snapshot(
    *, orphan_stratum: int, precision: int, poll: int, now_ns: int
) -> SystemSnapshot:
    """System variables of an orphan parent: offset 0, root delay 0, refid 127.0.0.1."""
    return SystemSnapshot(
        leap=LEAP_NONE,
        stratum=orphan_stratum,
        precision=precision,
        poll=poll,
        root_delay=0.0,
        root_dispersion=0.0,
        refid=ORPHAN_REFID,
        reference_ns=now_ns,
        offset=0.0,
        jitter=0.0,
    )
