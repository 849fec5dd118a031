"""Run and build log lines: masked, stored with a sequence number, followed live.

Lines are masked *before* they are stored, so nothing downstream (SSE, query, export,
pages) can leak a secret. Each line gets a per-stream sequence number; a live reader
(SSE) waits on a condition and resumes from the last number it saw (``Last-Event-ID``).
The default sink is this local store; VictoriaLogs can be added beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from reconciler.store import database, logs


@dataclass(frozen=True, slots=True)
class LogLine:
    stream: str
    seq: int
    at: str
    source: str
    channel: str
    line: str

    def as_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "at": self.at,
            "source": self.source,
            "channel": self.channel,
            "line": self.line,
        }


class LogStore:
    """Append-only log streams (one per run or build), readable live."""

    def __init__(self, db: database.Database):
        self.db = db
        self.lines = logs.LogLines(db)
        self._changed: dict[str, asyncio.Condition] = {}

    def append(self, stream: str, entries: Sequence[tuple[str, str, str, str]]) -> int:
        """Store (at, source, channel, masked line) entries; return the last sequence number."""
        if not entries:
            return self.last_seq(stream)
        last = self.lines.append(stream, entries)
        self._notify(stream)
        return last

    def close_stream(self, stream: str) -> None:
        self.lines.close(stream)
        self._notify(stream)

    def is_closed(self, stream: str) -> bool:
        return self.lines.is_closed(stream)

    def last_seq(self, stream: str) -> int:
        return self.lines.last_seq(stream)

    def read(
        self, stream: str, after: int = 0, limit: int = 1000, contains: str | None = None
    ) -> list[LogLine]:
        return [
            LogLine(r["stream"], r["seq"], r["at"], r["source"], r["channel"], r["line"])
            for r in self.lines.read(stream, after, limit, contains)
        ]

    async def follow(
        self, stream: str, after: int = 0, poll: float = 1.0
    ) -> AsyncIterator[LogLine]:
        """Every line after ``after``, then new ones as they come, until the stream is closed."""
        while True:
            lines = self.read(stream, after)
            for line in lines:
                yield line
                after = line.seq
            if lines:
                continue
            if self.is_closed(stream):
                return
            cond = self._changed.setdefault(stream, asyncio.Condition())
            # A poll bounds the wait: another process may write the same database.
            async with cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), poll)

    def _notify(self, stream: str) -> None:
        cond = self._changed.get(stream)
        if cond is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        loop.create_task(wake())
