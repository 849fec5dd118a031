"""Fixtures of the store tests: a migrated store in a fresh data dir, on each backend.

Every store test runs twice: on SQLite (the embedded default) and on PostgreSQL (a
fresh schema of the throwaway cluster ``tests/postgres_env.sh`` starts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import fresh_dsn

from reconciler.store import database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[database.Database]:
    """The operational store of a new data dir (``Database.open``), on each backend."""
    store_dsn = fresh_dsn() if request.param == "postgresql" else ""
    store = database.Database.open(tmp_path / "data", store=store_dsn or None)
    yield store
    store.close()
