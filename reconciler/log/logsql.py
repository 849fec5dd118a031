"""LogsQL (VictoriaLogs' query language) built from a ``LogQuery``, every value escaped.

Pure, no I/O. Each filter becomes an exact-value filter on the field QUIC-Flow ships
(``project:="shop"``, ``level:in("warn","error")``); the text filter becomes a
substring filter on the message, ``~"…"``, whose argument is a regular expression, so
the text is first quoted for RE2 (``.+*?()|[]{}^$`` and ``\\`` escaped) and then as a
LogsQL string. Strings are written as double-quoted literals with backslash escapes
(the form VictoriaLogs unquotes), so a value holding quotes, pipes (``|``), colons,
parentheses or the words ``AND``/``OR``/``NOT`` stays one value and never becomes query
syntax. The time range is ``_time:[start, end)`` in RFC 3339 with nanoseconds. The
order and limit are pipes: ``| sort by (_time desc, line_id desc) | limit N``.

Field names are fixed here (``FIELDS``), never taken from input.
"""

from __future__ import annotations

import json

from reconciler.log import records
from reconciler.log.queries import LogQuery

#: The fields of a shipped line, as ``reconciler.log.victorialogs`` writes them.
FIELDS = (
    "line_id",
    "stream_id",
    "seq",
    "run_id",
    "build_id",
    "project",
    "env",
    "stage",
    "task",
    "target",
    "source",
    "channel",
    "level",
)
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def quote(value: str) -> str:
    """``value`` as a LogsQL string literal: double quotes, backslash escapes."""
    return json.dumps(value, ensure_ascii=False)


def regex_literal(text: str) -> str:
    """An RE2 pattern matching ``text`` literally."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def _exact(field: str, value: str) -> str:
    return f"{field}:={quote(value)}"


def _among(field: str, values: tuple[str, ...]) -> str:
    if len(values) == 1:  # the exact filter: the common case reads plainly
        return _exact(field, values[0])
    return f"{field}:in({','.join(quote(v) for v in values)})"


def build(query: LogQuery) -> str:
    """The LogsQL for ``query`` (with its sort and limit pipes)."""
    parts: list[str] = []
    if query.start_ns is not None or query.end_ns is not None:
        start = records.format_ns(query.start_ns or 0)
        end = records.format_ns(query.end_ns) if query.end_ns is not None else None
        parts.append(f"_time:[{start}, {end})" if end else f"_time:>={start}")
    if query.projects is not None:  # the projects the caller may see; in() matches nothing
        parts.append(_among("project", query.projects))
    for field, value in (
        ("run_id", query.run_id),
        ("build_id", query.build_id),
        ("project", query.project),
        ("env", query.env),
        ("stage", query.stage),
        ("task", query.task),
        ("target", query.target),
    ):
        if value is not None:
            parts.append(_exact(field, value))
    if query.levels is not None:
        parts.append(_among("level", query.levels))
    if query.text:
        parts.append("~" + quote(regex_literal(query.text)))
    if query.after is not None:
        time_ns, line_id = query.after
        mark = "<" if query.newest_first else ">"
        # Lines at the cursor's own time are told apart by the id the local store gave them.
        at = records.format_ns(time_ns)
        parts.append(f"(_time:{mark}{at} OR (_time:[{at}, {at}] AND line_id:{mark}{line_id}))")
    order = "_time desc, line_id desc" if query.newest_first else "_time, line_id"
    head = " AND ".join(parts) if parts else "*"
    return f"{head} | sort by ({order}) | limit {query.limit}"
