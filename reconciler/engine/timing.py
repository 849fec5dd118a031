"""How long reconcile passes take and when the last one finished, for the metrics.

The reconciler notes each pass's planning time and end here; ``reconciler.metrics``
takes the plan times at scrape time (``take``) and reads ``last_finished`` for the
reconcile lag. Bounded: at most ``keep`` plan times wait between two scrapes.
"""

from __future__ import annotations

from collections import deque


class PassTimings:
    """Plan times not yet taken, the number of passes and when the last one finished."""

    def __init__(self, keep: int = 1000):
        self._plans: deque[float] = deque(maxlen=keep)
        self.count = 0
        self.last_finished: float | None = None

    def planned(self, seconds: float) -> None:
        """A pass planned in ``seconds``."""
        self._plans.append(seconds)

    def finished(self, at: float) -> None:
        """A pass finished at ``at`` (seconds since the epoch)."""
        self.count += 1
        self.last_finished = at

    def take(self) -> list[float]:
        """The plan times noted since the last call."""
        out = list(self._plans)
        self._plans.clear()
        return out
