"""Release windows: open/closed, next opening, midnight spans, DST, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reconciler.rules.windows import (
    WEEKDAYS,
    ReleaseWindow,
    is_open,
    next_opening,
    window_problems,
)

WORKDAYS = ("mon", "tue", "wed", "thu", "fri")
BERLIN_OFFICE = ReleaseWindow("Europe/Berlin", "09:00", "17:00", WORKDAYS)
FRIDAY_NIGHT = ReleaseWindow("UTC", "22:00", "02:00", ("fri",))
# 2026: US clocks spring forward Sun 8 Mar 02:00 and fall back Sun 1 Nov 02:00.
NY_SPRING = ReleaseWindow("America/New_York", "02:30", "04:00", ("sun",))
NY_FALL = ReleaseWindow("America/New_York", "01:30", "03:00", ("sun",))
LATE_SHIFT = ReleaseWindow("Asia/Shanghai", "20:00", "24:00", ("sat", "sun"))


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        ((), utc(2026, 7, 4, 3, 0), True),  # no windows: always open
        # Berlin winter (UTC+1), Wednesday
        ((BERLIN_OFFICE,), utc(2026, 1, 7, 7, 59), False),
        ((BERLIN_OFFICE,), utc(2026, 1, 7, 8, 0), True),  # 09:00 local: start inclusive
        ((BERLIN_OFFICE,), utc(2026, 1, 7, 15, 59), True),
        ((BERLIN_OFFICE,), utc(2026, 1, 7, 16, 0), False),  # 17:00 local: end exclusive
        # Berlin summer (UTC+2), Wednesday: same wall-clock window
        ((BERLIN_OFFICE,), utc(2026, 7, 1, 6, 59), False),
        ((BERLIN_OFFICE,), utc(2026, 7, 1, 7, 0), True),
        ((BERLIN_OFFICE,), utc(2026, 7, 1, 15, 0), False),
        # Saturday
        ((BERLIN_OFFICE,), utc(2026, 7, 4, 10, 0), False),
        # the weekday is judged in the window's zone, not UTC: Sun 23:30 UTC = Mon 01:30 Tokyo
        (
            (ReleaseWindow("Asia/Tokyo", "01:00", "02:00", ("mon",)),),
            utc(2026, 7, 5, 16, 30),
            True,
        ),
        # midnight span: opens Friday 22:00, closes Saturday 02:00
        ((FRIDAY_NIGHT,), utc(2026, 7, 3, 21, 59), False),
        ((FRIDAY_NIGHT,), utc(2026, 7, 3, 22, 0), True),
        ((FRIDAY_NIGHT,), utc(2026, 7, 4, 1, 59), True),  # Saturday, still Friday's window
        ((FRIDAY_NIGHT,), utc(2026, 7, 4, 2, 0), False),
        ((FRIDAY_NIGHT,), utc(2026, 7, 4, 23, 0), False),  # Saturday night: not listed
        ((FRIDAY_NIGHT,), utc(2026, 7, 3, 1, 0), False),  # Friday 01:00 belongs to Thursday
        # end "24:00"
        ((LATE_SHIFT,), utc(2026, 7, 4, 15, 59), True),  # Sat 23:59 Shanghai
        ((LATE_SHIFT,), utc(2026, 7, 4, 16, 0), False),  # Sun 00:00: Saturday's has ended
        ((LATE_SHIFT,), utc(2026, 7, 5, 11, 59), False),  # Sun 19:59 Shanghai
        # spring forward: 02:30 does not exist, read with the old offset → 03:30 EDT
        ((NY_SPRING,), utc(2026, 3, 8, 7, 29), False),  # 03:29 EDT
        ((NY_SPRING,), utc(2026, 3, 8, 7, 30), True),  # 03:30 EDT
        ((NY_SPRING,), utc(2026, 3, 8, 7, 59), True),  # 03:59 EDT
        ((NY_SPRING,), utc(2026, 3, 8, 8, 0), False),  # 04:00 EDT
        # fall back: 01:30 happens twice; the window opens at the first and lasts 2.5 h
        ((NY_FALL,), utc(2026, 11, 1, 5, 29), False),  # 01:29 EDT
        ((NY_FALL,), utc(2026, 11, 1, 5, 30), True),  # 01:30 EDT
        ((NY_FALL,), utc(2026, 11, 1, 6, 45), True),  # 01:45 EST, the second time round
        ((NY_FALL,), utc(2026, 11, 1, 7, 59), True),  # 02:59 EST
        ((NY_FALL,), utc(2026, 11, 1, 8, 0), False),  # 03:00 EST
        # several windows: any open one suffices
        ((BERLIN_OFFICE, FRIDAY_NIGHT), utc(2026, 7, 3, 23, 0), True),
        ((BERLIN_OFFICE, FRIDAY_NIGHT), utc(2026, 7, 4, 12, 0), False),
        # weekday names are case-insensitive
        ((ReleaseWindow("UTC", "00:00", "24:00", ("SAT",)),), utc(2026, 7, 4, 12, 0), True),
    ],
)
def test_is_open(windows: tuple[ReleaseWindow, ...], now: datetime, expected: bool) -> None:
    assert is_open(windows, now) is expected


def test_is_open_accepts_any_aware_timezone() -> None:
    now = datetime(2026, 1, 7, 9, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert is_open([BERLIN_OFFICE], now) is True
    assert is_open([BERLIN_OFFICE], now.astimezone(ZoneInfo("Asia/Tokyo"))) is True


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        ((), utc(2026, 7, 4, 3, 0), utc(2026, 7, 4, 3, 0)),  # always open
        ((BERLIN_OFFICE,), utc(2026, 7, 1, 8, 0), utc(2026, 7, 1, 8, 0)),  # open now
        ((BERLIN_OFFICE,), utc(2026, 7, 1, 5, 0), utc(2026, 7, 1, 7, 0)),  # later today
        # Friday evening → Monday 09:00 CEST
        ((BERLIN_OFFICE,), utc(2026, 7, 3, 16, 0), utc(2026, 7, 6, 7, 0)),
        # across the spring DST change: Fri 27 Mar 18:00 CET → Mon 30 Mar 09:00 CEST
        ((BERLIN_OFFICE,), utc(2026, 3, 27, 17, 0), utc(2026, 3, 30, 7, 0)),
        # across the autumn change: Fri 23 Oct → Mon 26 Oct 09:00 CET
        ((BERLIN_OFFICE,), utc(2026, 10, 23, 16, 0), utc(2026, 10, 26, 8, 0)),
        # midnight span, after it closed on Saturday → next Friday 22:00
        ((FRIDAY_NIGHT,), utc(2026, 7, 4, 2, 0), utc(2026, 7, 10, 22, 0)),
        # just before it opens
        ((FRIDAY_NIGHT,), utc(2026, 7, 3, 21, 0), utc(2026, 7, 3, 22, 0)),
        # spring-forward start in the gap: 03:30 EDT
        ((NY_SPRING,), utc(2026, 3, 7, 12, 0), utc(2026, 3, 8, 7, 30)),
        # earliest of several windows
        ((BERLIN_OFFICE, FRIDAY_NIGHT), utc(2026, 7, 3, 16, 0), utc(2026, 7, 3, 22, 0)),
        # a window that just closed opens again in a week
        (
            (ReleaseWindow("UTC", "10:00", "11:00", ("wed",)),),
            utc(2026, 7, 1, 11, 0),
            utc(2026, 7, 8, 10, 0),
        ),
        # never open: no weekdays listed (a config problem, tolerated at run time)
        ((ReleaseWindow("UTC", "10:00", "11:00", ()),), utc(2026, 7, 1, 11, 0), None),
    ],
)
def test_next_opening(
    windows: tuple[ReleaseWindow, ...], now: datetime, expected: datetime | None
) -> None:
    result = next_opening(windows, now)
    assert result == expected
    if result is not None:
        assert is_open(windows, result)
        if result != now:
            assert not is_open(windows, result - timedelta(minutes=1))


def test_next_opening_is_in_the_callers_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    result = next_opening([BERLIN_OFFICE], datetime(2026, 7, 3, 18, 0, tzinfo=berlin))
    assert result is not None
    assert result.tzinfo is berlin
    assert (result.weekday(), result.hour, result.minute) == (0, 9, 0)


@pytest.mark.parametrize("function", [is_open, next_opening])
def test_naive_now_is_refused(function: object) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        function([BERLIN_OFFICE], datetime(2026, 7, 1, 12, 0))  # type: ignore[operator]


def test_invalid_window_at_run_time_is_a_bug() -> None:
    with pytest.raises(ValueError, match="invalid release window"):
        is_open([ReleaseWindow("Mars/Olympus", "09:00", "17:00")], utc(2026, 7, 1, 12, 0))


def test_default_weekdays_are_every_day() -> None:
    assert ReleaseWindow("UTC", "09:00", "10:00").weekdays == WEEKDAYS


@pytest.mark.parametrize(
    ("timezone", "weekdays", "start", "end", "expected"),
    [
        ("Europe/Berlin", ["mon", "fri"], "09:00", "17:00", []),
        ("UTC", ["sun"], "22:00", "02:00", []),
        ("UTC", ["Sun"], "00:00", "24:00", []),
        (
            "Mars/Olympus",
            ["mon"],
            "09:00",
            "17:00",
            ["timezone must be an IANA time zone name like \"Europe/Berlin\", got 'Mars/Olympus'"],
        ),
        (
            "",
            ["mon"],
            "09:00",
            "17:00",
            ["timezone must be an IANA time zone name like \"Europe/Berlin\", got ''"],
        ),
        (
            "../../etc/passwd",
            ["mon"],
            "09:00",
            "17:00",
            [
                'timezone must be an IANA time zone name like "Europe/Berlin", '
                "got '../../etc/passwd'"
            ],
        ),
        (
            "UTC",
            [],
            "09:00",
            "17:00",
            ["weekdays must be a non-empty list of mon, tue, wed, thu, fri, sat, sun"],
        ),
        (
            "UTC",
            "mon",
            "09:00",
            "17:00",
            ["weekdays must be a non-empty list of mon, tue, wed, thu, fri, sat, sun"],
        ),
        (
            "UTC",
            ["mon", "funday", 3],
            "09:00",
            "17:00",
            [
                "weekdays[1] must be one of mon, tue, wed, thu, fri, sat, sun, got 'funday'",
                "weekdays[2] must be one of mon, tue, wed, thu, fri, sat, sun, got 3",
            ],
        ),
        (
            "UTC",
            ["mon"],
            "9:00",
            "17:00",
            ["start must be a time \"HH:MM\" (00:00–23:59), got '9:00'"],
        ),
        (
            "UTC",
            ["mon"],
            "24:00",
            "17:00",
            ["start must be a time \"HH:MM\" (00:00–23:59), got '24:00'"],
        ),
        (
            "UTC",
            ["mon"],
            "09:00",
            "17:60",
            ["end must be a time \"HH:MM\" (00:00–23:59), got '17:60'"],
        ),
        ("UTC", ["mon"], "09:00", None, ['end must be a time "HH:MM" (00:00–23:59), got None']),
        (
            "UTC",
            ["mon"],
            630,
            "17:00",
            ['start must be a quoted "HH:MM" string; YAML read an unquoted time as the number 630'],
        ),
        (
            "UTC",
            ["mon"],
            "09:00",
            "09:00",
            ["start and end are both '09:00'; a window needs a duration"],
        ),
    ],
)
def test_window_problems(
    timezone: object, weekdays: object, start: object, end: object, expected: list[str]
) -> None:
    assert window_problems(timezone, weekdays, start, end) == expected
