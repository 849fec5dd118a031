"""Fixtures of the store tests: a migrated SQLite store in a fresh data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.store import database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[database.Database]:
    """The operational store of a new data dir (``Database.open``)."""
    store = database.Database.open(tmp_path / "data")
    yield store
    store.close()
