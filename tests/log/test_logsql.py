"""LogsQL built from API filters: every value escaped, checked against the stand-in's parser.

The parser in ``tests/log/victoria.py`` reads strings as LogsQL does; a value that
broke out of its quotes would change what the query matches.
"""

from __future__ import annotations

import pytest
from log.victoria import run_query

from reconciler.log import logsql, records
from reconciler.log.queries import LogQuery

T0 = records.parse_time("2026-01-07T10:00:00Z")


def test_a_query_reads_as_exact_filters_a_substring_a_range_and_pipes() -> None:
    query = LogQuery(
        run_id="r-1",
        task="app",
        levels=("warn", "error"),
        text="refused",
        start_ns=T0,
        end_ns=T0 + 60_000_000_000,
        limit=50,
        projects=("shop", "blog"),
    )
    assert logsql.build(query) == (
        "_time:[2026-01-07T10:00:00.000000000Z, 2026-01-07T10:01:00.000000000Z) AND "
        'project:in("shop","blog") AND run_id:="r-1" AND task:="app" AND '
        'level:in("warn","error") AND ~"refused" | sort by (_time desc, line_id desc) | limit 50'
    )
    assert (
        logsql.build(LogQuery(newest_first=False, limit=5))
        == "* | sort by (_time, line_id) | limit 5"
    )


@pytest.mark.parametrize(
    "value",
    [
        'say "hi"',
        "a | limit 1",
        "AND",
        "x OR y",
        "NOT (z)",
        "_time:5m",
        "back\\slash",
        "regex .* [a-z]+ ^$ {2} (?i)",
        "line\nbreak\ttab",
        "ünïcödé ✓",
    ],
)
def test_values_with_quotes_pipes_keywords_and_regex_characters_stay_values(value: str) -> None:
    lines = [
        {"_msg": f"before {value} after", "_time_ns": T0, "target": value, "line_id": "1"},
        {"_msg": "something else", "_time_ns": T0 + 1, "target": "web-1", "line_id": "2"},
        {"_msg": value.upper() + "!", "_time_ns": T0 + 2, "target": "x", "line_id": "3"},
    ]
    by_text = run_query(lines, logsql.build(LogQuery(text=value)), None)
    expected_text = [e["line_id"] for e in lines if value in e["_msg"]]
    assert sorted(e["line_id"] for e in by_text) == expected_text
    by_target = run_query(lines, logsql.build(LogQuery(target=value)), None)
    assert [e["line_id"] for e in by_target] == ["1"]


def test_regex_literal_escapes_every_re2_metacharacter() -> None:
    assert logsql.regex_literal("a.b*c") == "a\\.b\\*c"
    assert logsql.regex_literal("(x|y)[1]{2}^$?+\\") == "\\(x\\|y\\)\\[1\\]\\{2\\}\\^\\$\\?\\+\\\\"
    assert logsql.quote('say "hi"\n') == '"say \\"hi\\"\\n"'
