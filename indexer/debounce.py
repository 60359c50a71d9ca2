"""When a watched folder should be indexed: after a quiet spell, or at most after a delay."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Debouncer:
    """Collects keys (the watched folders that file events touched) until they are due.

    They are due `quiet` seconds after the last event, so that a copy of thousands of photos
    is one run, but no later than `max_delay` seconds after the first one, so that a copy
    that never ends is still indexed as it goes. Time is passed in (`now`), never read, so
    that tests drive it with a fake clock.
    """

    quiet: float
    max_delay: float
    _pending: set[str] = field(default_factory=set)
    _first: float = 0.0
    _last: float = 0.0
    _not_before: float = float("-inf")

    def add(self, keys: Iterable[str], now: float) -> bool:
        """Record an event for `keys` at `now`; whether nothing was pending before."""
        keys = set(keys)
        if not keys:
            return False
        idle = not self._pending
        if idle:
            self._first = now
        self._pending |= keys
        self._last = max(self._last, now) if not idle else now
        return idle

    def defer(self, keys: Iterable[str], now: float, delay: float) -> None:
        """Put keys back after a failed run: due again, but not before `now + delay`."""
        self.add(keys, now)
        self._not_before = max(self._not_before, now + delay)

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending keys are due (0: now); None when nothing is pending."""
        if not self._pending:
            return None
        at = max(min(self._last + self.quiet, self._first + self.max_delay), self._not_before)
        return max(0.0, at - now)

    def take(self) -> set[str]:
        """The pending keys, forgotten here: the caller runs them."""
        keys, self._pending = self._pending, set()
        self._not_before = float("-inf")
        return keys

    @property
    def pending(self) -> frozenset[str]:
        """The keys waiting to be due."""
        return frozenset(self._pending)
