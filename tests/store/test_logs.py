"""Log lines: numbering per stream, reading after a number or by substring, closing a stream."""

from __future__ import annotations

from reconciler.store import database, logs


def test_lines_are_numbered_per_stream_and_read_back(db: database.Database) -> None:
    lines = logs.LogLines(db)
    assert lines.last_seq("r-1") == 0
    assert lines.append("r-1", [("t", "s", "stdout", "Error one"), ("t", "s", "stderr", "ok")]) == 2
    assert lines.append("r-2", [("t", "s", "stdout", "error two")]) == 1
    assert [r["line"] for r in lines.read("r-1", after=1)] == ["ok"]
    assert [r["line"] for r in lines.read("r-1", contains="Error")] == ["Error one"]
    assert [r["seq"] for r in lines.read("r-1", limit=1)] == [1]


def test_closing_a_stream_twice_is_harmless(db: database.Database) -> None:
    lines = logs.LogLines(db)
    assert not lines.is_closed("r-1")
    lines.close("r-1")
    lines.close("r-1")
    assert lines.is_closed("r-1") and not lines.is_closed("r-2")
