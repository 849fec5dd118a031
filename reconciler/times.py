"""Times as the log keeps them: RFC 3339 text and nanoseconds since the epoch.

Pure, no I/O. Below the log and the store in the layers, so that both read a line's
time the same way (the store indexes it, the log's readers and writers convert it).
"""

from __future__ import annotations

import datetime as dt
import re

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def ns_of(moment: dt.datetime) -> int:
    """``moment`` in nanoseconds since the epoch (naive times are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_time(text: str) -> int:
    """An RFC 3339 / ISO 8601 time in ns since the epoch; ValueError when it is none."""
    value = text.strip()
    if len(value) == 27 and value[19] == "." and value[26] == "Z":
        # The writers' own shape (``…T10:00:00.123456Z``), read for every line stored: no
        # nanosecond digits to keep aside, so Python's parser alone, and integer math.
        return (dt.datetime.fromisoformat(value) - _EPOCH) // _MICROSECOND * 1000
    if not value:
        raise ValueError("empty time")
    # Python reads at most microseconds: keep the nanosecond digits aside.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", value)
    extra = 0
    if match:
        digits = match.group(2)
        value = f"{match.group(1)}.{digits[:6].ljust(6, '0')}{match.group(3)}"
        extra = int(digits[6:9].ljust(3, "0")) if len(digits) > 6 else 0
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return ns_of(moment) + extra


def format_ns(ns: int) -> str:
    """``ns`` since the epoch as RFC 3339 with nanoseconds, UTC (``…T10:00:00.000000001Z``)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    moment = _EPOCH + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"
