"""Test helpers for the throwaway PostgreSQL cluster that tests/postgres_env.sh starts.

``fresh_dsn()`` gives each test its own schema in that cluster (``search_path`` set in
the DSN), so tests never see each other's rows. Without the cluster the PostgreSQL
variants skip with the reason — or fail, under ``QUICFLOW_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), so CI cannot pass without having run them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import psycopg
import pytest

STATE = Path("/tmp/quicflow-postgres.json")


def server_dsn() -> str:
    """The cluster's DSN (skips, or fails in CI, when there is no cluster)."""
    state = json.loads(STATE.read_text()) if STATE.exists() else {"reason": "not started"}
    if state.get("available"):
        return str(state["dsn"])
    reason = f"PostgreSQL unavailable: {state.get('reason')} (run tests/postgres_env.sh start)"
    if os.environ.get("QUICFLOW_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def fresh_dsn() -> str:
    """A DSN whose ``search_path`` is a new, empty schema of the cluster."""
    dsn = server_dsn()
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{dsn}?options=-csearch_path%3D{schema}"
