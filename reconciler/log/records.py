"""What a log line is: its fields, its level, its time in nanoseconds.

Pure, no I/O. ``LogLine`` is one stored line as every reader sees it (SSE, query,
export, pages, VictoriaLogs): the stream it belongs to (a run's or a build's id) and
its sequence number there, the time (ISO text and nanoseconds since the epoch), the
run or build, project, environment, stage, task and target it was written for, the
``source`` that wrote it (``web-1/deploy``, ``engine``), its ``channel`` (the output
stream: ``stdout``, ``stderr`` or ``system``), its ``level`` and its text, masked
before it was stored.

``level_of`` infers a level where a writer gives none: a leading level word
(``ERROR``, ``[warn]``, ``level=debug``, ``FATAL:``) wins; otherwise engine lines
saying something failed are errors, ``stderr`` is ``warn`` (tools print progress
there too, so it is not an error by itself) and the rest ``info``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.times import format_ns, ns_of, parse_time

__all__ = ["LEVELS", "LogLine", "format_ns", "level_of", "normalize_level", "ns_of", "parse_time"]

LEVELS = ("debug", "info", "warn", "error")
_ALIASES = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "notice": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "fatal": "error",
    "critical": "error",
    "crit": "error",
    "panic": "error",
}
# Only the level names, in any case, and each a whole word: most lines start with none,
# and failing at once is cheaper than matching any word and looking it up (every line
# written passes here).
_NAME = "(?ai:" + "|".join(sorted(_ALIASES, key=len, reverse=True)) + ")(?![A-Za-z])"
_LEADING_LEVEL = re.compile(
    r"\s*(?:\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?\s+)?"  # a timestamp first
    rf"(?:\[(?P<bracketed>{_NAME})\]|level=(?P<kv>{_NAME})|(?P<word>{_NAME})(?=[:\s]|$))"
)
_FAILED = re.compile(r"\b(failed|timed out|error|refused|rolled back)\b", re.IGNORECASE)


def normalize_level(text: str) -> str:
    """The level ``text`` names (``WARNING`` → ``warn``); ValueError when it names none."""
    level = _ALIASES.get(text.strip().lower())
    if level is None:
        raise ValueError(f"unknown level {text!r}: one of {', '.join(LEVELS)}")
    return level


def level_of(channel: str, message: str) -> str:
    """The level of a line nobody gave one (see the module docstring)."""
    match = _LEADING_LEVEL.match(message)
    if match:
        kind = match.lastgroup
        word = match.group(kind) if kind else ""
        named = _ALIASES.get(word.lower())
        # A bare word counts only in capitals or followed by a colon ("ERROR x", "error: x").
        if named and (kind != "word" or word.isupper() or message[match.end() :].startswith(":")):
            return named
    if channel == "system" and _FAILED.search(message):
        return "error"
    return "warn" if channel == "stderr" else "info"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One stored log line (its text masked before it was stored)."""

    stream: str
    seq: int
    at: str
    source: str
    channel: str
    line: str
    time_ns: int = 0
    run_id: str = ""
    build_id: str = ""
    project: str = ""
    env: str = ""
    stage: str = ""
    task: str = ""
    target: str = ""
    level: str = "info"
    id: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "at": self.at,
            "source": self.source,
            "channel": self.channel,
            "line": self.line,
            "stream": self.stream,
            "time_ns": self.time_ns,
            "run_id": self.run_id,
            "build_id": self.build_id,
            "project": self.project,
            "env": self.env,
            "stage": self.stage,
            "task": self.task,
            "target": self.target,
            "level": self.level,
        }

    def as_text(self) -> str:
        """The line as one line of a plain-text export."""
        source = f" [{self.source}]" if self.source else ""
        return f"{self.at}{source} {self.channel}: {self.line}\n"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LogLine:
        """A line read back from the store (a row with the ``log_lines`` columns)."""
        return cls(
            row["stream"],
            int(row["seq"]),
            row["at"],
            row["source"],
            row["channel"],
            row["line"],
            int(row["time_ns"]),
            row["run_id"],
            row["build_id"],
            row["project"],
            row["env"],
            row["stage"],
            row["task"],
            row["target"],
            row["level"],
            int(row["id"]),
        )
