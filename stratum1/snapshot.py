"""The immutable snapshot of system variables that the serving hot path reads without locks."""

from __future__ import annotations

from dataclasses import dataclass

from .sample import LEAP_NOTINSYNC

STRATUM_UNSYNC = 16


@dataclass(frozen=True, slots=True)
class SystemSnapshot:
    """What a reply needs from the system: published whole after every clock update.

    Replacing the reference to a new snapshot is atomic in CPython, so readers never see a
    half-updated set of variables.
    """

    leap: int = LEAP_NOTINSYNC
    stratum: int = STRATUM_UNSYNC
    precision: int = -20  # log2 seconds
    poll: int = 6  # log2 seconds
    root_delay: float = 0.0  # s
    root_dispersion: float = 0.0  # s
    refid: bytes = b"INIT"  # 4 bytes as on the wire
    reference_ns: int = 0  # Unix ns of the last clock update, 0 = never
    offset: float = 0.0  # s, last system offset (diagnostics only)
    jitter: float = 0.0  # s, system jitter (diagnostics only)
    system_peer_id: int = 0  # association id of the system peer (mode-6 ``peer``), 0 = none

    def root_dispersion_at(self, now_ns: int) -> float:
        """Root dispersion grown at 15 PPM since the reference time (what a reply at
        ``now_ns`` should carry, so clients see the error budget age while we coast)."""
        if self.reference_ns == 0:
            return self.root_dispersion
        return self.root_dispersion + 15e-6 * max(0, now_ns - self.reference_ns) / 1e9

    @property
    def synchronized(self) -> bool:
        return self.leap != LEAP_NOTINSYNC and self.stratum < STRATUM_UNSYNC


UNSYNCHRONIZED = SystemSnapshot()
