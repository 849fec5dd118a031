"""The log store: numbering, reading after a number, two writers on one stream, following."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.log.store import LogStore
from reconciler.store.logs import EncodedLines
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


async def test_a_follower_gets_pages_of_json_then_ends_with_the_stream(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db")
    try:
        logs = LogStore(db)
        logs.append("r-1", [_line(f"line {i}") for i in range(1, 26)])
        logs.close_stream("r-1")
        pages = [page async for page in logs.follow_json("r-1", after=3, page=10)]
        assert [(p.last_seq, p.line_count) for p in pages] == [(13, 10), (23, 10), (25, 2)]
        lines = [line for p in pages for line in json.loads(p.json)]
        assert [x["seq"] for x in lines] == list(range(4, 26))
        assert lines == [x.as_dict() for x in logs.read("r-1", after=3)]
    finally:
        db.close()


async def test_lines_written_just_before_another_process_closes_the_stream_are_sent(
    tmp_path: Path,
) -> None:
    """The writer appends and closes between the follower's read and its look at the stream."""
    here, there = Database(tmp_path / "q.db"), Database(tmp_path / "q.db")
    try:
        follower, writer = LogStore(here), LogStore(there)
        writer.append("r-1", [_line("first")])
        read_json = follower.lines.read_json

        def read_then_the_writer_finishes(stream: str, after: int, limit: int) -> EncodedLines:
            found = read_json(stream, after, limit)
            if after == 1 and not writer.is_closed(stream):
                writer.append(stream, [_line("last")])
                writer.close_stream(stream)
            return found

        follower.lines.read_json = read_then_the_writer_finishes  # type: ignore[method-assign]
        pages = [page async for page in follower.follow_json("r-1", poll=0.01)]
        assert [x["line"] for p in pages for x in json.loads(p.json)] == ["first", "last"]
    finally:
        here.close()
        there.close()
