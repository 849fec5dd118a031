"""The log model: levels, times in ns, and the stage/task/target of the step a line is in."""

from __future__ import annotations

import pytest

from reconciler.log import records, scopes


@pytest.mark.parametrize(
    ("channel", "message", "level"),
    [
        ("stdout", "ERROR could not connect", "error"),
        ("stdout", "error: could not connect", "error"),
        ("stdout", "an error happened", "info"),  # a word in the text is not a level
        ("stdout", "[warn] disk at 91%", "warn"),
        ("stdout", "level=debug msg=starting", "debug"),
        ("stdout", "2026-01-07T10:00:00Z WARNING slow", "warn"),
        ("stdout", "FATAL: out of memory", "error"),
        ("stderr", "Step 1/3 : FROM scratch", "warn"),
        ("stderr", "INFO all good", "info"),
        ("system", "run failed: exit code 2", "error"),
        ("system", "web-1/deploy timed out after 30.00s", "error"),
        ("system", "$ deploy on web-1", "info"),
        ("stdout", "hello", "info"),
    ],
)
def test_a_level_is_read_from_the_line_or_its_channel(
    channel: str, message: str, level: str
) -> None:
    assert records.level_of(channel, message) == level


def test_levels_have_one_spelling() -> None:
    assert records.normalize_level("WARNING") == "warn"
    assert records.normalize_level("fatal") == "error"
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        records.normalize_level("loud")


def test_times_keep_nanoseconds_both_ways() -> None:
    ns = records.parse_time("2026-01-07T10:00:00.123456789Z")
    assert ns % 1_000_000_000 == 123_456_789
    assert records.format_ns(ns) == "2026-01-07T10:00:00.123456789Z"
    assert records.parse_time("2026-01-07T10:00:00Z") == ns - 123_456_789
    assert records.parse_time("2026-01-07T12:00:00+02:00") == ns - 123_456_789
    assert records.parse_time(records.format_ns(0)) == 0
    with pytest.raises(ValueError):
        records.parse_time("yesterday")


def test_a_line_knows_the_stage_task_and_target_of_the_steps_it_is_written_in() -> None:
    assert scopes.fields() == ("", "", "")
    with scopes.entered("task:deploy/app"):
        assert scopes.fields() == ("deploy", "app", "")
        with scopes.entered("deploy:web-1@blue"):
            assert scopes.fields() == ("deploy", "app", "web-1")
        assert scopes.fields() == ("deploy", "app", "")
    with scopes.entered("on:test/smoke/web-2"):
        assert scopes.fields() == ("test", "smoke", "web-2")
    with scopes.entered("approval:prod"), scopes.entered("not a key"):
        assert scopes.fields() == ("prod", "", "")
    assert scopes.current() == ()
