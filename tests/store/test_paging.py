"""The one filter/order/page helper: the SQL it builds and what it reads back."""

from __future__ import annotations

import pytest

from reconciler.store import database, paging

RUNS = paging.Query("runs", order=("seq DESC",))


def test_no_filter_selects_everything_in_order() -> None:
    assert RUNS.select() == ("SELECT * FROM runs ORDER BY seq DESC", ())
    assert RUNS.select(10, 20) == (
        "SELECT * FROM runs ORDER BY seq DESC LIMIT ? OFFSET ?",
        (10, 20),
    )


def test_filters_given_none_are_left_out() -> None:
    query = RUNS.equal("project", "shop").equal("env", None).among("state", None)
    query = query.compare("seq", ">", None).compare("seq", "<=", 9)
    assert query.select(5) == (
        "SELECT * FROM runs WHERE project = ? AND seq <= ? ORDER BY seq DESC LIMIT ? OFFSET ?",
        ("shop", 9, 5, 0),
    )


def test_among_an_empty_list_matches_nothing() -> None:
    sql, params = RUNS.among("state", []).select()
    assert sql == "SELECT * FROM runs WHERE 1 = 0 ORDER BY seq DESC" and params == ()


def test_columns_order_and_free_conditions() -> None:
    query = (
        paging.Query("log_lines")
        .selecting("seq", "line")
        .ordered("seq")
        .where("instr(line, ?) > 0", "x")
        .among("stream", ["a", "b"])
    )
    assert query.select() == (
        "SELECT seq, line FROM log_lines WHERE instr(line, ?) > 0 AND stream IN (?, ?) ORDER BY seq",
        ("x", "a", "b"),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: paging.Query("runs; DROP TABLE runs"),
        lambda: paging.Query("runs", order=("seq; --",)),
        lambda: RUNS.equal("project = project OR 1", "x"),
        lambda: RUNS.compare("seq", "LIKE", 1),
        lambda: RUNS.selecting("*, password"),
    ],
)
def test_identifiers_and_operators_are_checked(make) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        make()


def _fill(db: database.Database, count: int) -> None:
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO log_lines (stream, seq, at, line) VALUES (?, ?, 't', ?)",
            [("a" if i % 3 else "b", i, f"line {i}") for i in range(1, count + 1)],
        )


def test_rows_page_count_and_first_read_the_table(db: database.Database) -> None:
    _fill(db, 10)
    lines = paging.Query("log_lines", order=("seq DESC",)).equal("stream", "a")
    rows, total = lines.page(db, 3, 1)
    assert [r["seq"] for r in rows] == [8, 7, 5] and total == 7
    assert lines.count(db) == 7
    assert [r["seq"] for r in lines.compare("seq", "<", 4).rows(db)] == [2, 1]
    first = lines.first(db)
    assert first is not None and first["seq"] == 10
    assert lines.equal("seq", 3).first(db) is None
    assert paging.Query("log_lines").among("stream", []).page(db, 5) == ([], 0)
