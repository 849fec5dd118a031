"""Log lines in the operational store: ``log_lines`` numbered per stream, ``log_streams`` closed.

Lines are numbered inside the write transaction, never from a cache: another process
may append to the same stream (an agent's log, a second apply).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.store import database, paging

_LINES = paging.Query("log_lines", order=("seq",))


class LogLines:
    """The ``log_lines`` and ``log_streams`` tables."""

    def __init__(self, db: database.Database):
        self.db = db

    def append(self, stream: str, entries: Sequence[tuple[str, str, str, str]]) -> int:
        """Store (at, source, channel, line) entries; return the last sequence number."""
        with self.db.transaction() as conn:
            start = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM log_lines WHERE stream = ?",
                (stream,),
            ).fetchone()["next"]
            conn.executemany(
                "INSERT INTO log_lines (stream, seq, at, source, channel, line) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (stream, start + i, at, source, channel, line)
                    for i, (at, source, channel, line) in enumerate(entries)
                ],
            )
        return int(start) + len(entries) - 1

    def close(self, stream: str) -> None:
        """Mark ``stream`` as finished."""
        self.db.execute(
            "INSERT INTO log_streams (stream, closed) VALUES (?, 1)"
            " ON CONFLICT (stream) DO UPDATE SET closed = excluded.closed",
            (stream,),
        )

    def is_closed(self, stream: str) -> bool:
        """Whether ``stream`` was marked finished."""
        rows = self.db.query("SELECT closed FROM log_streams WHERE stream = ?", (stream,))
        return bool(rows and rows[0]["closed"])

    def last_seq(self, stream: str) -> int:
        """The number of the last line of ``stream`` (0 when it has none)."""
        rows = self.db.query(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM log_lines WHERE stream = ?", (stream,)
        )
        return int(rows[0]["last"])

    def read(
        self, stream: str, after: int = 0, limit: int = 1000, contains: str | None = None
    ) -> list[database.Row]:
        """Up to ``limit`` lines after number ``after``, those containing ``contains`` if given."""
        query = _LINES.equal("stream", stream).compare("seq", ">", after)
        if contains:
            query = query.where(self.db.contains("line"), contains)
        return query.rows(self.db, limit)
