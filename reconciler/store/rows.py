"""Rows into records: a stored row becomes the frozen dataclass whose fields it names.

A repository states only what differs between the two — a renamed column, a value to
decode (JSON text, an enum, a 0/1 flag) — and every other field is read from the column
of the same name, so no repository copies a row field by field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

from reconciler.store import database

T = TypeVar("T")


def into(cls: type[T], row: database.Row, **values: Any) -> T:
    """A ``cls`` from ``row``: each field its column, unless given in ``values``."""
    read = {name: row[name] for name in _fields(cls) if name not in values}
    return cast(Any, cls)(**read, **values)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    return names
