"""The API's log query parameters: read into a LogQuery, or refused naming the parameter."""

from __future__ import annotations

import pytest

from reconciler.log import queries, records

NOW = records.parse_time("2026-01-07T12:00:00Z")


def test_parameters_become_filters() -> None:
    query = queries.from_params(
        {
            "task_id": "deploy/app",
            "filter": "refused",
            "run_id": "r-1",
            "level": "WARNING,error",
            "start": "2h",
            "end": "2026-01-07T11:30:00Z",
            "limit": "20",
            "order": "asc",
        },
        NOW,
    )
    assert (query.stage, query.task, query.run_id, query.text) == (
        "deploy",
        "app",
        "r-1",
        "refused",
    )
    assert query.levels == ("warn", "error")
    assert query.start_ns == NOW - 2 * 3600 * 1_000_000_000
    assert query.end_ns == records.parse_time("2026-01-07T11:30:00Z")
    assert (query.limit, query.newest_first, query.streams) == (20, False, ("r-1",))
    assert queries.from_params({"min_level": "warn"}, NOW).levels == ("warn", "error")
    assert queries.from_params({"task_id": "app"}, NOW).task == "app"
    assert queries.from_params({"start": str(NOW)}, NOW).start_ns == NOW
    cursor = queries.cursor_of(5, 7)
    assert queries.from_params({"cursor": cursor}, NOW).after == (5, 7)


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"limit": "0"}, "limit", "between 1 and 10000"),
        ({"limit": "many"}, "limit", "integer"),
        ({"order": "up"}, "order", "asc or desc"),
        ({"start": "last tuesday"}, "start", "RFC 3339"),
        ({"start": "1h", "end": "2h"}, "end", "after start"),
        ({"level": "loud"}, "level", "unknown level"),
        ({"level": "info", "min_level": "warn"}, "level", "not both"),
        ({"cursor": "abc"}, "cursor", "next_cursor"),
        ({"task_id": "deploy/app", "stage": "test"}, "task_id", "not in stage test"),
    ],
)
def test_a_bad_parameter_is_named(params: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(queries.QueryError, match=words) as caught:
        queries.from_params(params, NOW)
    assert caught.value.field == field
