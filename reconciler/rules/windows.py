"""Release windows: when an environment allows releases, in its own time zone.

A window is an IANA time zone, the weekdays it opens on, and a local start and end
time ``"HH:MM"``. An end before the start spans midnight: ``fri 22:00–02:00`` is open
from Friday 22:00 until Saturday 02:00, and the weekday is the day the window *opens*.
``end`` may be ``"24:00"`` for "until the end of the day"; start and end may not be
equal. An environment with no windows is always open.

Times are wall-clock times in the window's zone and stay DST-correct: a 09:00–17:00
window opens at 09:00 local time whether the UTC offset is +1 or +2. A time inside a
spring-forward gap (02:30 on the night clocks jump from 02:00 to 03:00) is read with the
offset from before the jump, so it falls at 03:30 local time; a time that occurs twice
when clocks fall back means its first occurrence.

Everything is pure: ``now`` is always a parameter and must be timezone-aware.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: Weekday names in config, Monday first (``date.weekday()`` order).
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_END_OF_DAY = "24:00"


class WindowLike(Protocol):
    """Anything shaped like a release window (the config model's class, or ours)."""

    @property
    def timezone(self) -> str: ...

    @property
    def weekdays(self) -> Sequence[str]: ...

    @property
    def start(self) -> str: ...

    @property
    def end(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ReleaseWindow:
    """A weekly release window; ``weekdays`` defaults to every day."""

    timezone: str
    start: str
    end: str
    weekdays: tuple[str, ...] = WEEKDAYS


# --------------------------------------------------------------------------- validation


def window_problems(timezone: Any, weekdays: Any, start: Any, end: Any) -> list[str]:
    """Problems with one window's fields, phrased for the config author."""
    return _problems(timezone, weekdays, start, end, require_weekdays=True)


def _problems(
    timezone: Any, weekdays: Any, start: Any, end: Any, require_weekdays: bool
) -> list[str]:
    problems: list[str] = []
    if not isinstance(timezone, str) or not _zone_exists(timezone):
        problems.append(
            f'timezone must be an IANA time zone name like "Europe/Berlin", got {timezone!r}'
        )
    if not isinstance(weekdays, list | tuple) or (require_weekdays and not weekdays):
        problems.append(f"weekdays must be a non-empty list of {', '.join(WEEKDAYS)}")
    else:
        for index, day in enumerate(weekdays):
            if not isinstance(day, str) or day.lower() not in WEEKDAYS:
                problems.append(
                    f"weekdays[{index}] must be one of {', '.join(WEEKDAYS)}, got {day!r}"
                )
    problems += _time_problems("start", start, allow_end_of_day=False)
    problems += _time_problems("end", end, allow_end_of_day=True)
    if isinstance(start, str) and start == end:
        problems.append(f"start and end are both {start!r}; a window needs a duration")
    return problems


def _time_problems(field: str, value: Any, allow_end_of_day: bool) -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:30 as the base-60 integer 630.
        return [
            f'{field} must be a quoted "HH:MM" string; YAML read an unquoted time as '
            f"the number {value}"
        ]
    if not isinstance(value, str) or not (
        _TIME.match(value) or (allow_end_of_day and value == _END_OF_DAY)
    ):
        return [f'{field} must be a time "HH:MM" (00:00–23:59), got {value!r}']
    return []


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Parsed:
    zone: ZoneInfo
    days: frozenset[int]
    start: time
    end: time
    end_next_day: bool  # end is on the day after the opening day


def _parse(window: WindowLike) -> _Parsed:
    # A window listing no weekdays is a config problem, but at run time it simply never
    # opens; everything else invalid is a bug in the caller.
    problems = _problems(
        window.timezone, window.weekdays, window.start, window.end, require_weekdays=False
    )
    if problems:
        raise ValueError("invalid release window: " + "; ".join(problems))
    start = _to_time(window.start)
    end = time(0, 0) if window.end == _END_OF_DAY else _to_time(window.end)
    return _Parsed(
        zone=ZoneInfo(window.timezone),
        days=frozenset(WEEKDAYS.index(day.lower()) for day in window.weekdays),
        start=start,
        end=end,
        end_next_day=window.end == _END_OF_DAY or end < start,
    )


def _to_time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _occurrence(window: _Parsed, day: date) -> tuple[datetime, datetime]:
    """The window opening on local ``day``, as UTC instants [opens, closes)."""
    opens = datetime.combine(day, window.start, tzinfo=window.zone)
    end_day = day + timedelta(days=1) if window.end_next_day else day
    closes = datetime.combine(end_day, window.end, tzinfo=window.zone)
    # Compare in UTC: datetimes sharing a tzinfo compare by wall time, ignoring DST.
    return opens.astimezone(UTC), closes.astimezone(UTC)


def _require_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def is_open(windows: Iterable[WindowLike], now: datetime) -> bool:
    """Whether a release may start at ``now``; no windows means always open."""
    instant = _require_aware(now)
    parsed = [_parse(window) for window in windows]
    if not parsed:
        return True
    for window in parsed:
        today = instant.astimezone(window.zone).date()
        # Yesterday's window may span midnight into today.
        for day in (today - timedelta(days=1), today):
            if day.weekday() in window.days:
                opens, closes = _occurrence(window, day)
                if opens <= instant < closes:
                    return True
    return False


def next_opening(windows: Iterable[WindowLike], now: datetime) -> datetime | None:
    """When a release may next start: ``now`` if a window is open, else the next opening.

    No windows means always open, so ``now`` is returned; None means no window ever
    opens (every window lists no weekdays). The result is in ``now``'s time zone.
    """
    instant = _require_aware(now)
    window_list = list(windows)
    if is_open(window_list, now):
        return now
    earliest: datetime | None = None
    for window in (_parse(w) for w in window_list):
        today = instant.astimezone(window.zone).date()
        # Eight days ahead always reaches the next opening of a weekly window.
        for offset in range(0, 9):
            day = today + timedelta(days=offset)
            if day.weekday() not in window.days:
                continue
            opens, _ = _occurrence(window, day)
            if opens > instant:
                if earliest is None or opens < earliest:
                    earliest = opens
                break
    return None if earliest is None else earliest.astimezone(now.tzinfo)
