"""The log store: numbering, reading after a sequence number, and two writers on one stream."""

from __future__ import annotations

from pathlib import Path

from reconciler.log.store import LogStore
from reconciler.store.sqlite import SQLiteDatabase as Database


def _line(text: str) -> tuple[str, str, str, str]:
    return ("2026-11-29T10:00:00Z", "t1/deploy", "stdout", text)


def test_two_writers_on_one_stream_number_lines_without_gaps(tmp_path: Path) -> None:
    """Two processes (here: two connections) append to the same run's log, interleaved."""
    first, second = Database(tmp_path / "q.db"), Database(tmp_path / "q.db")
    try:
        a, b = LogStore(first), LogStore(second)
        assert a.append("r-1", [_line("one"), _line("two")]) == 2
        assert b.append("r-1", [_line("three")]) == 3
        assert a.append("r-1", [_line("four")]) == 4  # a did not trust a stale counter
        assert [(x.seq, x.line) for x in b.read("r-1")] == [
            (1, "one"),
            (2, "two"),
            (3, "three"),
            (4, "four"),
        ]
        assert [x.line for x in a.read("r-1", after=2)] == ["three", "four"]
        assert [x.line for x in a.read("r-1", contains="o")] == ["one", "two", "four"]
    finally:
        first.close()
        second.close()


def test_streams_are_independent_and_close(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db")
    try:
        logs = LogStore(db)
        logs.append("r-1", [_line("a")])
        logs.append("r-2", [_line("b")])
        assert logs.last_seq("r-1") == 1 and logs.last_seq("r-2") == 1
        assert not logs.is_closed("r-1")
        logs.close_stream("r-1")
        assert logs.is_closed("r-1") and not logs.is_closed("r-2")
    finally:
        db.close()
