"""Run and build log lines: masked, stored with a sequence number, followed live, shipped.

Lines are masked *before* they are stored, so nothing downstream (SSE, query, export,
pages, VictoriaLogs) can leak a secret: the engine and the builder mask every line
with the run's or build's ``Masker`` before ``append``. Each line gets a per-stream
sequence number; a live reader (SSE) waits on a condition and resumes from the last
number it saw (``Last-Event-ID``), and gets pages of lines as JSON (``follow_json``).

``LogStore`` is the one writer: ``append`` fills in what a line carries
(``reconciler.log.records``) — its time in ns, level, the run or build, project and
environment of its stream, and the stage, task and target of the step it was written
in (``reconciler.log.scopes``) — commits it to the local store (the operational
store's ``log_lines``; a line is acknowledged once that transaction committed, so a
killed process loses none) and hands it to every other sink (``sinks``:
``reconciler.log.victorialogs``), which ship it in the background. ``query`` answers
from the sink ``settings.backend`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol

from reconciler.log import queries, records, scopes
from reconciler.log.records import LogLine
from reconciler.log.settings import LogSettings
from reconciler.store import database, logs

__all__ = ["LogLine", "LogSink", "LogStore"]
_SCOPES_CACHED = 4096
#: Lines a live reader is sent at once at most (one SSE event).
FOLLOW_PAGE = 1000


class LogSink(Protocol):
    """Somewhere else lines go, after the local store took them."""

    name: str

    @property
    def dropped(self) -> int:
        """Lines this sink lost (for the metrics)."""

    def write(self, lines: Sequence[LogLine]) -> None:
        """Take stored lines (queue them; never block on the network)."""

    async def query(self, query: queries.LogQuery) -> list[LogLine]:
        """Lines matching ``query``."""

    async def close(self) -> None:
        """Send or keep what is queued, then stop."""


class LogStore:
    """Append-only log streams (one per run or build), readable live, shipped to sinks."""

    def __init__(self, db: database.Database, settings: LogSettings | None = None):
        self.db = db
        self.lines = logs.LogLines(db)
        self.settings = settings or LogSettings()
        self.sinks: list[LogSink] = []
        self.written = 0  # lines stored by this process
        self._changed: dict[str, asyncio.Condition] = {}
        self._scopes: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._last_at: tuple[str, int] = ("", 0)

    # -- writing ------------------------------------------------------------------------

    def append(self, stream: str, entries: Sequence[tuple[str, str, str, str]]) -> int:
        """Store (at, source, channel, masked line) entries; return the last sequence number."""
        if not entries:
            return self.last_seq(stream)
        stage, task, target = scopes.fields()
        time_ns, level_of = self._time_ns, records.level_of
        built = [
            logs.Entry(
                at,
                source,
                channel,
                line,
                time_ns(at),
                level_of(channel, line),
                stage,
                task,
                # "web-1/deploy": the target the command ran on, unless the step names one.
                target or (source.partition("/")[0] if "/" in source else ""),
            )
            for at, source, channel, line in entries
        ]
        scope = self._scope(stream)
        last = self.lines.append(stream, built, scope)
        self.written += len(built)
        if self.sinks:
            self._ship(stream, built, scope, last)
        self._notify(stream)
        return last

    def _time_ns(self, at: str) -> int:
        if at == self._last_at[0]:  # a batch shares one time: parse it once
            return self._last_at[1]
        try:
            time_ns = records.parse_time(at)
        except ValueError:
            return time.time_ns()
        self._last_at = (at, time_ns)
        return time_ns

    def _scope(self, stream: str) -> dict[str, str]:
        cached = self._scopes.get(stream)
        if cached is not None:
            self._scopes.move_to_end(stream)
            return cached
        found = self.lines.scope_of(stream)
        if found:  # an unknown stream may become a run's later: ask again next time
            self._scopes[stream] = found
            if len(self._scopes) > _SCOPES_CACHED:
                self._scopes.popitem(last=False)
        return found

    def _ship(
        self, stream: str, built: Sequence[logs.Entry], scope: dict[str, str], last: int
    ) -> None:
        first = last - len(built) + 1
        ids = {
            r["seq"]: r["id"]
            for r in self.db.query(
                "SELECT seq, id FROM log_lines WHERE stream = ? AND seq >= ? AND seq <= ?",
                (stream, first, last),
            )
        }
        lines = [
            LogLine(
                stream,
                first + i,
                e.at,
                e.source,
                e.channel,
                e.line,
                e.time_ns,
                scope.get("run_id", ""),
                scope.get("build_id", ""),
                scope.get("project", ""),
                scope.get("env", ""),
                e.stage,
                e.task,
                e.target,
                e.level,
                int(ids.get(first + i, 0)),
            )
            for i, e in enumerate(built)
        ]
        for sink in self.sinks:
            sink.write(lines)

    def close_stream(self, stream: str) -> None:
        self.lines.close(stream)
        self._notify(stream)

    # -- reading ------------------------------------------------------------------------

    def is_closed(self, stream: str) -> bool:
        return self.lines.is_closed(stream)

    def last_seq(self, stream: str) -> int:
        return self.lines.last_seq(stream)

    def read(
        self, stream: str, after: int = 0, limit: int = 1000, contains: str | None = None
    ) -> list[LogLine]:
        return [LogLine.from_row(r) for r in self.lines.read(stream, after, limit, contains)]

    def export(self, stream: str) -> Iterator[LogLine]:
        """Every stored line of ``stream``, in order (read in batches)."""
        for row in self.lines.export(stream):
            yield LogLine.from_row(row)

    def search(self, query: queries.LogQuery) -> list[LogLine]:
        """Lines matching ``query`` in the local store."""
        projects = query.projects
        if query.project is not None:
            visible = projects is None or query.project in projects
            projects = (query.project,) if visible else ()
        if projects is not None and not projects:
            return []
        rows = self.lines.search(
            streams=query.streams,
            projects=projects,
            env=query.env,
            stage=query.stage,
            task=query.task,
            target=query.target,
            levels=query.levels,
            text=query.text,
            start_ns=query.start_ns,
            end_ns=query.end_ns,
            after=query.after,
            limit=query.limit,
            newest_first=query.newest_first,
        )
        return [LogLine.from_row(r) for r in rows]

    async def query(self, query: queries.LogQuery) -> tuple[str, list[LogLine]]:
        """(backend, lines matching ``query``) from the sink ``settings.backend`` names."""
        if self.settings.backend != "local":
            for sink in self.sinks:
                if sink.name == self.settings.backend:
                    if query.projects is not None and not query.projects:
                        return sink.name, []
                    return sink.name, await sink.query(query)
        return "local", self.search(query)

    async def follow(
        self, stream: str, after: int = 0, poll: float = 1.0
    ) -> AsyncIterator[LogLine]:
        """Every line after ``after``, then new ones as they come, until the stream is closed."""
        async for batch in self.follow_batches(stream, after, poll):
            for line in batch:
                yield line

    async def follow_batches(
        self, stream: str, after: int = 0, poll: float = 1.0
    ) -> AsyncIterator[list[LogLine]]:
        """``follow``, a stored batch at a time."""
        while True:
            closed = self.is_closed(stream)
            lines = self.read(stream, after)
            if lines:
                yield lines
                after = lines[-1].seq
                continue
            if closed:
                return
            await self._wait(stream, poll)

    async def follow_json(
        self, stream: str, after: int = 0, poll: float = 1.0, page: int = FOLLOW_PAGE
    ) -> AsyncIterator[logs.EncodedLines]:
        """``follow_batches`` as JSON arrays of ``LogLine.as_dict`` objects (what SSE sends).

        Each page holds up to ``page`` lines, encoded by the database: a live reader such
        as SSE sends a page as it is and builds no line in between.
        """
        while True:
            closed = self.is_closed(stream)
            found = self.lines.read_json(stream, after, page)
            if found.line_count:
                yield found
                after = found.last_seq
                continue
            if closed:
                return
            await self._wait(stream, poll)

    async def _wait(self, stream: str, poll: float) -> None:
        """Until a line is written to ``stream`` here, or ``poll`` seconds have passed."""
        cond = self._changed.setdefault(stream, asyncio.Condition())
        # A poll bounds the wait: another process may write the same database.
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait(), poll)

    # -- sinks --------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Lines the sinks lost (the local store loses none it acknowledged)."""
        return sum(sink.dropped for sink in self.sinks)

    async def close(self) -> None:
        """Let every sink send or spool what it holds."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            await sink.close()

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
