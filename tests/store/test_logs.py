"""Log lines: numbering per stream, reading after a number, by substring or as JSON, closing."""

from __future__ import annotations

import json

from reconciler.log import records
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


def _entry(n: int, text: str, **fields: object) -> logs.Entry:
    values: dict[str, object] = {"time_ns": 1_000 + n, "level": "info", **fields}
    return logs.Entry(f"t{n}", "web-1/deploy", "stdout", text, **values)  # type: ignore[arg-type]


def test_lines_carry_their_fields_and_are_found_by_each_filter(db: database.Database) -> None:
    lines = logs.LogLines(db)
    shop = {"run_id": "r-1", "project": "shop", "env": "prod"}
    lines.append(
        "r-1", [_entry(1, "pulling image", stage="deploy", task="app", target="web-1")], shop
    )
    lines.append("r-1", [_entry(2, 'error: "disk" full', level="error", task="app")], shop)
    lines.append(
        "b-1", [_entry(3, "error in build", level="warn")], {"build_id": "b-1", "project": "blog"}
    )
    row = lines.read("r-1")[0]
    assert (
        row["run_id"],
        row["project"],
        row["env"],
        row["stage"],
        row["task"],
        row["target"],
    ) == (
        "r-1",
        "shop",
        "prod",
        "deploy",
        "app",
        "web-1",
    )
    assert lines.scope_of("r-1") == {}  # no run record here: only runs and builds have a scope

    def seqs(**filters: object) -> list[tuple[str, int]]:
        return [(r["stream"], r["seq"]) for r in lines.search(**filters)]  # type: ignore[arg-type]

    assert seqs() == [("b-1", 1), ("r-1", 2), ("r-1", 1)]  # newest first
    assert seqs(newest_first=False) == [("r-1", 1), ("r-1", 2), ("b-1", 1)]
    assert seqs(text="error") == [("b-1", 1), ("r-1", 2)]
    assert seqs(text='"disk"') == [("r-1", 2)]
    assert seqs(text="Error") == []  # case-sensitive, like contains=
    assert seqs(streams=["r-1"], text="error") == [("r-1", 2)]
    assert seqs(projects=["blog"]) == [("b-1", 1)]
    assert seqs(projects=[]) == []
    assert seqs(levels=["warn", "error"]) == [("b-1", 1), ("r-1", 2)]
    assert seqs(task="app", env="prod") == [("r-1", 2), ("r-1", 1)]
    assert seqs(start_ns=1_002, end_ns=1_003) == [("r-1", 2)]
    first = lines.search(limit=1)[0]
    assert seqs(after=(first["time_ns"], first["id"])) == [("r-1", 2), ("r-1", 1)]


def test_text_search_finds_lines_before_and_after_the_index_took_them_in(
    db: database.Database,
) -> None:
    lines = logs.LogLines(db)
    lines.append("r-1", [_entry(i, f"step {i} connection refused") for i in range(1, 4)])
    assert lines.unindexed() == (3 if lines.indexed else 0)
    assert lines.index(2) == (2 if lines.indexed else 0)  # part of it indexed
    lines.append("r-2", [_entry(9, "connection refused again")])
    found = lines.search(text="connection refused", newest_first=False)
    assert [(r["stream"], r["seq"]) for r in found] == [
        ("r-1", 1),
        ("r-1", 2),
        ("r-1", 3),
        ("r-2", 1),
    ]
    while lines.index(100):
        pass
    assert lines.unindexed() == 0
    assert len(lines.search(text="refused")) == 4 and lines.search(text="nowhere") == []
    assert [r["seq"] for r in lines.search(text="ab")] == []  # too short for the index: scanned


def test_retention_deletes_only_what_is_due_and_keeps_the_counts(db: database.Database) -> None:
    lines = logs.LogLines(db)
    lines.append("old", [_entry(i, f"old {i}", time_ns=100 + i) for i in range(5)])
    lines.append("new", [_entry(i, f"new {i}", time_ns=10_000 + i) for i in range(5)])
    lines.close("old")
    lines.index()
    assert lines.usage() == (
        10,
        sum(logs.size_of(f"{w} {i}") for w in ("old", "new") for i in range(5)),
    )
    assert lines.prune_before(10_000, batch=3) == 3
    assert lines.prune_before(10_000) == 2 and lines.prune_before(10_000) == 0
    assert [r["line"] for r in lines.search(newest_first=False)] == [f"new {i}" for i in range(5)]
    assert lines.search(text="old") == [] and lines.is_closed("old")
    assert lines.usage()[0] == 5
    # By size: free room for two lines, the oldest go first.
    assert lines.prune_oldest(2 * logs.size_of("new 0")) == 2
    assert [r["line"] for r in lines.read("new")] == ["new 2", "new 3", "new 4"]
    assert lines.usage() == (3, 3 * logs.size_of("new 0"))
    assert lines.append("new", [_entry(9, "more")]) == 6  # numbering goes on after a purge


def test_lines_read_as_json_are_the_lines_read_as_rows(db: database.Database) -> None:
    lines = logs.LogLines(db)
    texts = ['say "hi"', "back\\slash", "tab\there", "\x1b[31mred\x1b[0m", "naïve 🚀", "a\nb\rc"]
    scope = {"run_id": "r-1", "project": "shop", "env": "prod"}
    lines.append(
        "r-1",
        [_entry(n, text, stage="deploy", level="warn") for n, text in enumerate(texts)],
        scope,
    )
    page = lines.read_json("r-1", after=1, limit=4)
    assert (page.last_seq, page.line_count) == (5, 4)
    rows = lines.read("r-1", after=1, limit=4)
    assert json.loads(page.json) == [records.LogLine.from_row(r).as_dict() for r in rows]
    assert "\n" not in page.json and "\r" not in page.json  # one SSE data line holds it
    assert list(json.loads(page.json)[0]) == list(logs.JSON_FIELDS)
    assert lines.read_json("r-1", after=6) == logs.EncodedLines(6, 0, "[]")
