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

from reconciler.store.database import Database

_SCHEMA = [
    """
    CREATE TABLE log_lines (
        stream TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT NOT NULL, source TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT 'stdout', line TEXT NOT NULL, PRIMARY KEY (stream, seq)
    );
    CREATE TABLE log_streams (stream TEXT PRIMARY KEY, closed INTEGER NOT NULL DEFAULT 0)
    """,
]


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

    def __init__(self, db: Database):
        self.db = db
        db.migrate("logs", _SCHEMA)
        self._changed: dict[str, asyncio.Condition] = {}

    def append(self, stream: str, entries: Sequence[tuple[str, str, str, str]]) -> int:
        """Store (at, source, channel, masked line) entries; return the last sequence number."""
        if not entries:
            return self.last_seq(stream)
        with self.db.transaction() as conn:
            # Numbered inside the write transaction (BEGIN IMMEDIATE), never from a cache:
            # another process may append to the same stream (an agent's log, a second apply).
            start = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM log_lines WHERE stream = ?", (stream,)
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO log_lines (stream, seq, at, source, channel, line) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (stream, start + i, at, source, channel, line)
                    for i, (at, source, channel, line) in enumerate(entries)
                ],
            )
        self._notify(stream)
        return start + len(entries) - 1

    def close_stream(self, stream: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO log_streams VALUES (?, 1)", (stream,))
        self._notify(stream)

    def is_closed(self, stream: str) -> bool:
        rows = self.db.query("SELECT closed FROM log_streams WHERE stream = ?", (stream,))
        return bool(rows and rows[0][0])

    def last_seq(self, stream: str) -> int:
        return self.db.query(
            "SELECT COALESCE(MAX(seq), 0) FROM log_lines WHERE stream = ?", (stream,)
        )[0][0]

    def read(
        self, stream: str, after: int = 0, limit: int = 1000, contains: str | None = None
    ) -> list[LogLine]:
        sql = "SELECT * FROM log_lines WHERE stream = ? AND seq > ?"
        params: list[object] = [stream, after]
        if contains:
            sql += " AND instr(line, ?) > 0"
            params.append(contains)
        rows = self.db.query(sql + " ORDER BY seq LIMIT ?", (*params, limit))
        return [
            LogLine(r["stream"], r["seq"], r["at"], r["source"], r["channel"], r["line"])
            for r in rows
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
