"""Refused webhook deliveries per trigger and source: rate-limited, and counted, not recorded each.

A delivery that fails verification (a forged or mis-signed one, or a body over the
limit) is refused. Refusals are counted per *key* — the trigger id and the source
address — in a fixed window (``window`` seconds from the key's first refusal):

- the first ``record_each`` refusals of a window get a trigger record each, so an
  operator fixing a mis-set secret sees exactly why each delivery was refused;
- the ones after that are counted in **one** record of the window ("N deliveries
  refused …"), whose count is written back at most every ``flush_every`` seconds (and
  by ``WebhookDeliveries.flush`` when the server stops);
- past ``limit`` refusals in the window the key is **rate-limited**: its deliveries
  are answered 429 with ``Retry-After`` before anything is verified or read, and only
  counted.

So a flood of forged deliveries costs a handful of records, not one each, and no
secret reads once limited. The counts live in memory, bounded by ``max_keys`` (the
oldest keys are dropped first). Pure: no I/O; the clock is a parameter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

Key = tuple[str, str]  # (trigger id, source address)


class Write(StrEnum):
    """What the delivery path writes for one refusal."""

    RECORD = "record"  # a record of its own
    OPEN = "open"  # the window's aggregate record, new
    TALLY = "tally"  # the aggregate record's count, due to be written
    NONE = "none"  # nothing now (counted in memory)


@dataclass(slots=True)
class Tally:
    """The refusals of one key in its current window."""

    started: float
    count: int = 0
    record_id: int | None = None  # the aggregate record, once written
    written: int = 0  # the count the aggregate record says
    written_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Counted:
    """One refusal as counted: what to write, and the key's tally after it."""

    write: Write
    count: int  # refusals of this window so far, this one included
    aggregated: int  # refusals the aggregate record stands for (0 before it exists)
    record_id: int | None


class RefusalCounter:
    """Counts refusals per (trigger, source) and says when to limit and what to write."""

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        record_each: int = 3,
        flush_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ):
        if not 0 <= record_each <= limit:
            raise ValueError("record_each must be between 0 and limit")
        self.limit = limit
        self.window = window
        self.record_each = record_each
        self.flush_every = flush_every
        self.clock = clock
        self.max_keys = max_keys
        self._tallies: OrderedDict[Key, Tally] = OrderedDict()

    def _current(self, key: Key) -> Tally | None:
        tally = self._tallies.get(key)
        if tally is not None and self.clock() - tally.started >= self.window:
            return None  # the window is over (its record keeps the final count)
        return tally

    def retry_after(self, key: Key) -> float | None:
        """Seconds until ``key`` is no longer limited, or None when it is not."""
        tally = self._current(key)
        if tally is None or tally.count < self.limit:
            return None
        return max(tally.started + self.window - self.clock(), 0.1)

    def refuse(self, key: Key) -> Counted:
        """Count one refusal of ``key``; what to write for it."""
        now = self.clock()
        tally = self._current(key)
        if tally is None:
            tally = self._tallies[key] = Tally(now)
        self._tallies.move_to_end(key)
        while len(self._tallies) > self.max_keys:
            self._tallies.popitem(last=False)
        tally.count += 1
        aggregated = tally.count - self.record_each
        if aggregated <= 0:
            return Counted(Write.RECORD, tally.count, 0, None)
        if tally.record_id is None:
            return Counted(Write.OPEN, tally.count, aggregated, None)
        if now - tally.written_at >= self.flush_every or tally.count <= self.limit:
            return Counted(Write.TALLY, tally.count, aggregated, tally.record_id)
        return Counted(Write.NONE, tally.count, aggregated, tally.record_id)

    def opened(self, key: Key, record_id: int, aggregated: int) -> None:
        """The aggregate record of ``key``'s window was written, standing for ``aggregated``."""
        tally = self._tallies.get(key)
        if tally is not None:
            tally.record_id = record_id
            self.written(key, aggregated)

    def written(self, key: Key, aggregated: int) -> None:
        """The aggregate record of ``key`` now says ``aggregated``."""
        tally = self._tallies.get(key)
        if tally is not None:
            tally.written = aggregated
            tally.written_at = self.clock()

    def unwritten(self) -> Iterator[tuple[Key, int, int]]:
        """(key, record id, count) of every aggregate record whose count is behind."""
        for key, tally in list(self._tallies.items()):
            aggregated = tally.count - self.record_each
            if tally.record_id is not None and aggregated > tally.written:
                yield key, tally.record_id, aggregated
