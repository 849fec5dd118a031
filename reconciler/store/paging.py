"""One way for repositories to filter, order and page a table, with the total when asked.

``Query`` builds ``SELECT … FROM table WHERE … ORDER BY … LIMIT ? OFFSET ?`` and the
matching ``COUNT(*)`` from equality, ``IN`` and comparison (range) filters, so no
repository writes that by hand. A filter given ``None`` is left out, which is what an
optional API parameter means; an empty list for ``among`` matches nothing.

Column names and the order are code, never input: they are checked to be plain
identifiers and interpolated; every value is a parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from reconciler.store import database

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ORDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*( (ASC|DESC))?$")
_OPERATORS = frozenset({"<", "<=", ">", ">=", "!="})


def _column(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a column name: {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Query:
    """A filtered, ordered read of one table (each method returns a new Query)."""

    table: str
    order: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    clauses: tuple[str, ...] = ()
    params: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        _column(self.table)
        for column in self.columns:
            _column(column)
        for term in self.order:
            if not _ORDER.match(term):
                raise ValueError(f"not an order term: {term!r}")

    def selecting(self, *columns: str) -> Query:
        """The same rows, only ``columns`` of them."""
        return replace(self, columns=columns)

    def ordered(self, *order: str) -> Query:
        """The same filters in another order (terms like ``"seq DESC"``)."""
        return replace(self, order=order)

    def where(self, clause: str, *params: Any) -> Query:
        """Add a condition written out (e.g. ``Database.contains``), with its parameters."""
        return replace(self, clauses=(*self.clauses, clause), params=(*self.params, *params))

    def equal(self, column: str, value: Any) -> Query:
        """Only rows whose ``column`` is ``value`` (no filter when ``value`` is None)."""
        return self if value is None else self.where(f"{_column(column)} = ?", value)

    def among(self, column: str, values: Iterable[Any] | None) -> Query:
        """Only rows whose ``column`` is one of ``values`` (None: no filter; empty: no rows)."""
        if values is None:
            return self
        listed = tuple(values)
        if not listed:
            return self.where("1 = 0")
        marks = ", ".join("?" * len(listed))
        return self.where(f"{_column(column)} IN ({marks})", *listed)

    def compare(self, column: str, operator: str, value: Any) -> Query:
        """Only rows with ``column <operator> value`` (a range end; None: no filter)."""
        if operator not in _OPERATORS:
            raise ValueError(f"not a comparison: {operator!r}")
        return self if value is None else self.where(f"{_column(column)} {operator} ?", value)

    def select(self, limit: int | None = None, offset: int = 0) -> tuple[str, tuple[Any, ...]]:
        """The SQL and parameters of the page (all rows when ``limit`` is None)."""
        sql = f"SELECT {', '.join(self.columns) or '*'} FROM {self.table}{self._where()}"
        if self.order:
            sql += " ORDER BY " + ", ".join(self.order)
        if limit is None:
            return sql, self.params
        return sql + " LIMIT ? OFFSET ?", (*self.params, limit, offset)

    def rows(
        self, db: database.Database, limit: int | None = None, offset: int = 0
    ) -> list[database.Row]:
        """The rows of the page."""
        return db.query(*self.select(limit, offset))

    def first(self, db: database.Database) -> database.Row | None:
        """The first row, if any."""
        rows = self.rows(db, 1)
        return rows[0] if rows else None

    def count(self, db: database.Database) -> int:
        """How many rows match (ignoring limit and offset)."""
        sql = f"SELECT COUNT(*) AS total FROM {self.table}{self._where()}"
        return int(db.query(sql, self.params)[0]["total"])

    def page(
        self, db: database.Database, limit: int, offset: int = 0
    ) -> tuple[list[database.Row], int]:
        """The rows of the page and the total count of matching rows."""
        return self.rows(db, limit, offset), self.count(db)

    def _where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""
