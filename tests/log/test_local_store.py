"""The local log store at size: 1,000,000 lines across 100 runs on SQLite (the default).

Queries by run, text and time return exactly the lines that match, an export returns
exactly what was written, and retention deletes only the lines that are due.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.log.queries import LogQuery
from reconciler.log.store import LogStore
from reconciler.store import logs
from reconciler.store.sqlite import SQLiteDatabase

RUNS = 100
PER_RUN = 10_000
BATCH = 1000
T0 = 1_767_780_000_000_000_000  # 2026-01-07T10:00:00Z
WORDS = ("pulling", "layer", "extracting", "started", "health", "passed", "GET /", "cache hit")


def message(k: int) -> str:
    extra = " connection refused" if k % 997 == 0 else ""
    return f"{WORDS[k % len(WORDS)]} item={k}{extra}"


def time_of(k: int) -> int:
    return T0 + k * 1_000_000  # one line a millisecond, across runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LogStore:
    db = SQLiteDatabase(tmp_path_factory.mktemp("logs") / "quicflow.db")
    lines = logs.LogLines(db)
    for run in range(RUNS):
        scope = {"run_id": f"r-{run}", "project": f"p{run % 4}", "env": "prod"}
        for start in range(0, PER_RUN, BATCH):
            entries = []
            for i in range(start, start + BATCH):
                k = i * RUNS + run  # lines of the runs interleave in time
                entries.append(
                    logs.Entry(
                        "",
                        f"web-{k % 3}/deploy",
                        "stdout",
                        message(k),
                        time_of(k),
                        "error" if k % 997 == 0 else "info",
                        "deploy",
                        "app",
                        f"web-{k % 3}",
                    )
                )
            lines.append(f"r-{run}", entries, scope)
    while lines.index(20_000):
        pass
    return LogStore(db)


def test_a_million_lines_are_there(store: LogStore) -> None:
    assert store.lines.usage()[0] == RUNS * PER_RUN
    assert store.lines.unindexed() == 0


def test_query_by_run_and_text_returns_exactly_the_matching_lines(store: LogStore) -> None:
    found = store.search(LogQuery(run_id="r-7", text="connection refused", limit=10_000))
    expected = [k for k in range(7, RUNS * PER_RUN, RUNS) if k % 997 == 0]
    assert sorted(int(x.line.split("item=")[1].split()[0]) for x in found) == expected
    assert all(x.run_id == "r-7" and x.level == "error" for x in found)


def test_query_by_text_across_runs_and_by_project(store: LogStore) -> None:
    found = store.search(LogQuery(text="item=123456", limit=10))
    assert [x.line for x in found] == [message(123456)]
    refused = store.search(LogQuery(text="connection refused", projects=("p1",), limit=10_000))
    expected = [k for k in range(RUNS * PER_RUN) if k % 997 == 0 and (k % RUNS) % 4 == 1]
    assert len(refused) == len(expected)
    assert {x.project for x in refused} == {"p1"}


def test_query_by_time_window(store: LogStore) -> None:
    start, end = time_of(500_000), time_of(500_250)
    found = store.search(LogQuery(start_ns=start, end_ns=end, limit=1000, newest_first=False))
    assert [x.time_ns for x in found] == [time_of(k) for k in range(500_000, 500_250)]
    newest = store.search(LogQuery(start_ns=start, end_ns=end, limit=5))
    assert [x.time_ns for x in newest] == [time_of(k) for k in range(500_249, 500_244, -1)]


def test_export_equals_what_was_written(store: LogStore) -> None:
    exported = list(store.export("r-42"))
    assert [x.seq for x in exported] == list(range(1, PER_RUN + 1))
    assert [x.line for x in exported] == [message(i * RUNS + 42) for i in range(PER_RUN)]


def test_retention_deletes_only_what_is_due(tmp_path: Path, store: LogStore) -> None:
    # On a copy-sized store of its own: the module's store stays whole for the other tests.
    db = SQLiteDatabase(tmp_path / "quicflow.db")
    try:
        lines = logs.LogLines(db)
        for run in range(10):
            lines.append(
                f"r-{run}",
                [
                    logs.Entry("", "s", "stdout", message(k), time_of(k))
                    for k in range(run, 20_000, 10)
                ],
                {"run_id": f"r-{run}"},
            )
        lines.index(50_000)
        cutoff = time_of(12_345)
        deleted = 0
        while count := lines.prune_before(cutoff, 5000):
            deleted += count
        assert deleted == 12_345
        remaining = lines.search(limit=20_000, newest_first=False)
        assert [x["time_ns"] for x in remaining] == [time_of(k) for k in range(12_345, 20_000)]
        assert lines.usage()[0] == 20_000 - 12_345
        assert lines.search(text="item=12344") == [] and len(lines.search(text="item=12345")) == 1
    finally:
        db.close()
