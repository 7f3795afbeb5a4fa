"""Exponential back-off for reopening a refclock device that failed or vanished."""

from __future__ import annotations


class Backoff:
    """Delays ``initial``, ``initial*factor``, ... capped at ``maximum`` seconds; ``reset()``
    after the device has delivered data again."""

    def __init__(self, initial: float = 1.0, maximum: float = 64.0, factor: float = 2.0) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("back-off needs 0 < initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next_delay(self) -> float:
        """The delay before the next attempt; each call lengthens the following one."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial
