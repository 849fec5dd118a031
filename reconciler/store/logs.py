"""Log lines in the operational store: ``log_lines`` numbered per stream, ``log_streams`` closed.

Lines are numbered inside the write transaction, never from a cache: another process
may append to the same stream (an agent's log, a second apply). Each line carries
where it came from (run or build, project, environment, stage, task, target, channel,
level) and its time in nanoseconds; its integer ``id`` grows with every line written.

``log_streams`` counts the lines and bytes of each stream in the same transaction, so
the size of the store is a sum over streams, not a scan. On SQLite a contentless
trigram FTS5 table (``log_search``) indexes the text; it is filled behind the writes
(``index``), and a search also scans the lines written since, so no answer waits for
the index and none misses a line. On PostgreSQL text is matched with ``strpos`` inside
the other filters. A live reader gets lines as JSON the database encoded
(``read_json``).

Retention (``prune_before``, ``prune_oldest``) deletes whole lines, oldest first, and
takes them out of the index and the counters in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from reconciler import times
from reconciler.store import database, paging

_LINES = paging.Query("log_lines", order=("seq",))
#: A trigram index cannot answer a search for fewer than three characters.
_MIN_INDEXED = 3
_CHUNK = 500
#: What ``usage`` counts per line besides its text: its fields and the index entries.
LINE_OVERHEAD = 96
#: The stream's own columns, then an ``Entry``'s in its order, so a row is one tuple join.
_INSERT = (
    "INSERT INTO log_lines (stream, seq, run_id, build_id, project, env,"
    " at, source, channel, line, time_ns, level, stage, task, target)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


#: A line's fields as every reader is sent them (``reconciler.log.records.LogLine.as_dict``).
JSON_FIELDS = (
    "seq",
    "at",
    "source",
    "channel",
    "line",
    "stream",
    "time_ns",
    "run_id",
    "build_id",
    "project",
    "env",
    "stage",
    "task",
    "target",
    "level",
)
_PAIRS = ", ".join(f"'{name}', {name}" for name in JSON_FIELDS)
#: Each dialect's JSON object of a row: encoded where the row is, not once per line in Python.
_JSON_OF_ROW = {
    "sqlite": f"json_object({_PAIRS})",
    "postgresql": f"json_build_object({_PAIRS})::text",
}


class EncodedLines(NamedTuple):
    """Lines of one stream read as a JSON array, and the number of the last of them."""

    last_seq: int
    line_count: int
    json: str


class Entry(NamedTuple):
    """One line to store (its text already masked), with where and when it was written."""

    # A tuple, not a frozen dataclass: lines are written tens of thousands a second, and a
    # frozen dataclass's __init__ (one object.__setattr__ per field) was a fifth of that.

    at: str
    source: str
    channel: str
    line: str
    time_ns: int = 0
    level: str = "info"
    stage: str = ""
    task: str = ""
    target: str = ""


def _time_ns(at: str) -> int:
    """``at`` (RFC 3339 / ISO 8601) in ns since the epoch; now when it does not parse."""
    try:
        return times.parse_time(at)
    except ValueError:
        return time.time_ns()


def _entry(value: Sequence[str]) -> Entry:
    at, source, channel, line = value
    return Entry(at, source, channel, line, _time_ns(at))


def size_of(line: str) -> int:
    """What one line counts towards a store's size: its UTF-8 text and ``LINE_OVERHEAD``."""
    return len(line.encode()) + LINE_OVERHEAD


class LogLines:
    """The ``log_lines`` and ``log_streams`` tables."""

    def __init__(self, db: database.Database):
        self.db = db
        self.indexed = db.dialect == "sqlite"

    def append(
        self,
        stream: str,
        entries: Sequence[Entry | tuple[str, str, str, str]],
        scope: Mapping[str, str] | None = None,
    ) -> int:
        """Store entries ((at, source, channel, line) or ``Entry``); the last sequence number.

        ``scope`` gives the stream's ``run_id``, ``build_id``, ``project`` and ``env``.
        """
        lines = [e if isinstance(e, Entry) else _entry(e) for e in entries]
        scope = scope or {}
        run_id, build_id = scope.get("run_id", ""), scope.get("build_id", "")
        project, env = scope.get("project", ""), scope.get("env", "")
        # One encode of the whole batch: the same sum as size_of per line, in one C call.
        size = len("".join([e.line for e in lines]).encode()) + LINE_OVERHEAD * len(lines)
        with self.db.transaction() as conn:
            start = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM log_lines WHERE stream = ?",
                (stream,),
            ).fetchone()["next"]
            conn.executemany(
                _INSERT,
                [
                    (stream, seq, run_id, build_id, project, env, *e)
                    for seq, e in enumerate(lines, start)
                ],
            )
            conn.execute(
                "INSERT INTO log_streams (stream, closed, lines, bytes) VALUES (?, 0, ?, ?)"
                " ON CONFLICT (stream) DO UPDATE SET lines = log_streams.lines + excluded.lines,"
                " bytes = log_streams.bytes + excluded.bytes",
                (stream, len(lines), size),
            )
        return int(start) + len(lines) - 1

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

    def read_json(self, stream: str, after: int = 0, limit: int = 1000) -> EncodedLines:
        """``read`` as one JSON array of ``JSON_FIELDS`` objects (for a live reader to send).

        The database encodes each line: reading rows into lines and encoding those in
        Python took six times as long, and a live log is read as fast as it is written.
        """
        rows = self.db.query(
            f"SELECT seq, {_JSON_OF_ROW[self.db.dialect]} AS encoded FROM log_lines"
            " WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after, limit),
        )
        if not rows:
            return EncodedLines(after, 0, "[]")
        encoded = ",".join([row["encoded"] for row in rows])
        return EncodedLines(int(rows[-1]["seq"]), len(rows), f"[{encoded}]")

    def scope_of(self, stream: str) -> dict[str, str]:
        """``run_id``, ``build_id``, ``project``, ``env`` of a run's or a build's stream."""
        runs = self.db.query("SELECT project, env FROM runs WHERE id = ?", (stream,))
        if runs:
            return {"run_id": stream, "project": runs[0]["project"], "env": runs[0]["env"]}
        builds = self.db.query("SELECT project FROM builds WHERE id = ?", (stream,))
        if builds:
            return {"build_id": stream, "project": builds[0]["project"]}
        return {}

    # -- search -------------------------------------------------------------------------

    def search(
        self,
        *,
        streams: Sequence[str] | None = None,
        projects: Sequence[str] | None = None,
        env: str | None = None,
        stage: str | None = None,
        task: str | None = None,
        target: str | None = None,
        levels: Sequence[str] | None = None,
        text: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        after: tuple[int, int] | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[database.Row]:
        """Lines matching every filter given, by (time, id), newest first unless told.

        ``streams`` are run or build ids, ``projects`` the projects the caller may see;
        ``text`` is a case-sensitive substring; ``start_ns`` is inclusive, ``end_ns``
        exclusive; ``after`` is the (time_ns, id) of the last line of the previous page.
        """
        query = (
            paging.Query("log_lines")
            .among("stream", streams)
            .among("project", projects)
            .equal("env", env)
            .equal("stage", stage)
            .equal("task", task)
            .equal("target", target)
            .among("level", levels)
            .compare("time_ns", ">=", start_ns)
            .compare("time_ns", "<", end_ns)
        )
        if text:
            if self.indexed and streams is None and len(text) >= _MIN_INDEXED:
                # Lines the index holds, and those written since it was last brought up.
                query = query.where(
                    "id IN (SELECT rowid FROM log_search WHERE log_search MATCH ?"
                    " UNION ALL SELECT id FROM log_lines WHERE id >"
                    " (SELECT upto FROM log_search_progress WHERE id = 1))",
                    '"' + text.replace('"', '""') + '"',
                )
            query = query.where(self.db.contains("line"), text)
        direction = "DESC" if newest_first else "ASC"
        if after is not None:
            mark = "<" if newest_first else ">"
            query = query.where(
                f"(time_ns {mark} ? OR (time_ns = ? AND id {mark} ?))", after[0], after[0], after[1]
            )
        return query.ordered(f"time_ns {direction}", f"id {direction}").rows(self.db, limit)

    def export(self, stream: str, batch: int = 5000) -> Iterable[database.Row]:
        """Every line of ``stream`` in order, read ``batch`` lines at a time."""
        after = 0
        while True:
            rows = self.read(stream, after, batch)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    def streams_of(self, stream_ids: Sequence[str]) -> dict[str, database.Row]:
        """The ``log_streams`` rows of ``stream_ids`` (closed, lines, bytes)."""
        if not stream_ids:
            return {}
        rows = paging.Query("log_streams").among("stream", stream_ids).rows(self.db)
        return {r["stream"]: r for r in rows}

    # -- the index ----------------------------------------------------------------------

    def index(self, batch: int = 2000) -> int:
        """Add up to ``batch`` lines written since the last call to the text index; how many."""
        if not self.indexed:
            return 0
        with self.db.transaction() as conn:
            upto = conn.execute("SELECT upto FROM log_search_progress WHERE id = 1").fetchone()[
                "upto"
            ]
            found = conn.execute(
                "SELECT COUNT(*) AS n, MAX(id) AS last FROM"
                " (SELECT id FROM log_lines WHERE id > ? ORDER BY id LIMIT ?)",
                (upto, batch),
            ).fetchone()
            if not found["n"]:
                return 0
            # Copied inside SQLite: the lines never become Python strings (a fifth less time).
            conn.execute(
                "INSERT INTO log_search (rowid, line)"
                " SELECT id, line FROM log_lines WHERE id > ? AND id <= ?",
                (upto, found["last"]),
            )
            conn.execute("UPDATE log_search_progress SET upto = ? WHERE id = 1", (found["last"],))
        return int(found["n"])

    def unindexed(self) -> int:
        """How many lines the text index has yet to take in (0 where there is none)."""
        if not self.indexed:
            return 0
        rows = self.db.query(
            "SELECT COUNT(*) AS n FROM log_lines WHERE id >"
            " (SELECT upto FROM log_search_progress WHERE id = 1)"
        )
        return int(rows[0]["n"])

    # -- retention ----------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(lines, bytes) stored, as counted by ``size_of``."""
        row = self.db.query(
            "SELECT COALESCE(SUM(lines), 0) AS lines, COALESCE(SUM(bytes), 0) AS bytes"
            " FROM log_streams"
        )[0]
        return int(row["lines"]), int(row["bytes"])

    def prune_before(self, cutoff_ns: int, batch: int = 5000) -> int:
        """Delete up to ``batch`` of the oldest lines written before ``cutoff_ns``; how many."""
        rows = self.db.query(
            "SELECT id, stream, line FROM log_lines WHERE time_ns < ? ORDER BY time_ns, id LIMIT ?",
            (cutoff_ns, batch),
        )
        return self._delete(rows)

    def prune_oldest(self, free: int, batch: int = 5000) -> int:
        """Delete the oldest lines (at most ``batch``) until ``free`` bytes are freed; how many."""
        if free <= 0:
            return 0
        rows = self.db.query(
            "SELECT id, stream, line FROM log_lines ORDER BY time_ns, id LIMIT ?", (batch,)
        )
        chosen: list[database.Row] = []
        freed = 0
        for row in rows:
            if freed >= free:
                break
            chosen.append(row)
            freed += size_of(row["line"])
        return self._delete(chosen)

    def _delete(self, rows: Sequence[database.Row]) -> int:
        if not rows:
            return 0
        per_stream: dict[str, list[int]] = {}
        for row in rows:
            counted = per_stream.setdefault(row["stream"], [0, 0])
            counted[0] += 1
            counted[1] += size_of(row["line"])
        with self.db.transaction() as conn:
            if self.indexed:
                upto = conn.execute("SELECT upto FROM log_search_progress WHERE id = 1").fetchone()[
                    "upto"
                ]
                conn.executemany(
                    "INSERT INTO log_search (log_search, rowid, line) VALUES ('delete', ?, ?)",
                    [(r["id"], r["line"]) for r in rows if r["id"] <= upto],
                )
            ids = [r["id"] for r in rows]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                conn.execute(
                    f"DELETE FROM log_lines WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
            conn.executemany(
                "UPDATE log_streams SET lines = lines - ?, bytes = bytes - ? WHERE stream = ?",
                [(n, size, stream) for stream, (n, size) in per_stream.items()],
            )
        return len(rows)
