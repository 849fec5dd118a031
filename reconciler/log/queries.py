"""A search over stored log lines: the filters of ``GET /api/release/logs/query``, checked.

Pure, no I/O. ``LogQuery`` holds what a caller may filter on; ``from_params`` reads it
from the API's query parameters and raises ``QueryError`` naming the parameter at
fault. Sinks answer it: the local store with SQL, VictoriaLogs with the LogsQL that
``reconciler.log.logsql`` builds from it. ``projects`` is never a caller's choice: the
API sets it to the projects the caller may see (None: every project).

Parameters:

- ``run_id`` (a run), ``build_id`` (a build), ``task_id`` (a pipeline task,
  ``stage/task`` or just ``task``), ``stage``, ``target``, ``project``, ``env``;
- ``filter``: text the line contains (case-sensitive substring);
- ``level``: one level or a comma-separated list (``warn,error``); ``min_level``: that
  level and above;
- ``start`` (inclusive) and ``end`` (exclusive): RFC 3339 times, nanoseconds since the
  epoch, or a duration back from now (``15m``, ``2h``, ``7d``);
- ``limit`` (1–10,000, default 100), ``order`` (``desc``, the default: newest first, or
  ``asc``), ``cursor`` (``next_cursor`` of the previous page).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.durations import parse_duration
from reconciler.log import records

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
_CURSOR = re.compile(r"^(\d+)-(\d+)$")
_NUMBER = re.compile(r"^\d+$")


class QueryError(ValueError):
    """A query parameter that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters over log lines; None means "any"."""

    run_id: str | None = None
    build_id: str | None = None
    project: str | None = None
    env: str | None = None
    stage: str | None = None
    task: str | None = None
    target: str | None = None
    levels: tuple[str, ...] | None = None
    text: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    limit: int = DEFAULT_LIMIT
    newest_first: bool = True
    after: tuple[int, int] | None = None  # (time_ns, id) of the previous page's last line
    projects: tuple[str, ...] | None = None  # what the caller may see (set by the API)

    @property
    def streams(self) -> tuple[str, ...] | None:
        """The run or build streams the query is confined to (None: any)."""
        named = tuple(s for s in (self.run_id, self.build_id) if s)
        return named or None


def cursor_of(time_ns: int, line_id: int) -> str:
    """The ``cursor`` that continues after a line."""
    return f"{time_ns}-{line_id}"


def time_param(name: str, value: str, now_ns: int) -> int:
    """A time parameter in ns: RFC 3339, ns since the epoch, or a duration back from now."""
    text = value.strip()
    if _NUMBER.match(text):
        return int(text)
    try:
        return records.parse_time(text)
    except ValueError:
        pass
    try:
        back = parse_duration(text)
    except (ValueError, TypeError):
        back = None
    if back is None:
        raise QueryError(
            name,
            f"{name} must be an RFC 3339 time (2026-01-07T10:00:00Z), nanoseconds since the "
            f"epoch, or a duration back from now (15m, 2h, 7d); got {value!r}",
        )
    return now_ns - int(back * 1_000_000_000)


def _levels(params: Mapping[str, str]) -> tuple[str, ...] | None:
    if params.get("level") and params.get("min_level"):
        raise QueryError("level", "give level or min_level, not both")
    try:
        if params.get("level"):
            names = [p for p in params["level"].split(",") if p.strip()]
            return tuple(dict.fromkeys(records.normalize_level(n) for n in names))
        if params.get("min_level"):
            lowest = records.LEVELS.index(records.normalize_level(params["min_level"]))
            return records.LEVELS[lowest:]
    except ValueError as exc:
        raise QueryError("min_level" if params.get("min_level") else "level", str(exc)) from None
    return None


def from_params(params: Mapping[str, str], now_ns: int) -> LogQuery:
    """The query the API's parameters ask for (``QueryError`` naming a bad one)."""

    def text(name: str) -> str | None:
        value = params.get(name)
        return value if value else None

    task = text("task_id") or text("task")
    stage = text("stage")
    if task and "/" in task:
        task_stage, _, task = task.partition("/")
        if stage and stage != task_stage:
            raise QueryError("task_id", f"task_id {task_stage}/{task} is not in stage {stage}")
        stage = task_stage
    limit_text = params.get("limit") or str(DEFAULT_LIMIT)
    if not _NUMBER.match(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be an integer between 1 and {MAX_LIMIT}")
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise QueryError("order", "order must be asc or desc")
    start = time_param("start", params["start"], now_ns) if params.get("start") else None
    end = time_param("end", params["end"], now_ns) if params.get("end") else None
    if start is not None and end is not None and end <= start:
        raise QueryError("end", "end must be after start")
    after = None
    if params.get("cursor"):
        match = _CURSOR.match(params["cursor"])
        if not match:
            raise QueryError("cursor", "cursor must be the next_cursor of a previous answer")
        after = (int(match.group(1)), int(match.group(2)))
    return LogQuery(
        run_id=text("run_id"),
        build_id=text("build_id"),
        project=text("project"),
        env=text("env"),
        stage=stage,
        task=task,
        target=text("target"),
        levels=_levels(params),
        text=text("filter"),
        start_ns=start,
        end_ns=end,
        limit=int(limit_text),
        newest_first=order == "desc",
        after=after,
    )
