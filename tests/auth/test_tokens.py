"""API tokens and sessions: issued once, stored hashed, expiring, used-at written once a minute."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.auth import tokens
from reconciler.store import database


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[database.Database]:
    store = database.Database.open(tmp_path)
    yield store
    store.close()


def test_a_token_is_stored_only_as_its_digest(db: database.Database) -> None:
    store = tokens.TokenStore(db)
    token = store.create("alice")
    assert token.startswith(tokens.TOKEN_PREFIX)
    stored = [tuple(r) for r in db.query("SELECT * FROM api_tokens")]
    assert token not in repr(stored)
    assert store.lookup(token) == "alice"
    assert store.lookup(token, kind="session") is None
    assert store.lookup("qft_" + "x" * 43) is None and store.lookup("not-a-token") is None


def test_expiry_last_use_and_revoking(db: database.Database) -> None:
    clock = Clock()
    store = tokens.TokenStore(db, clock)
    api = store.create("alice")
    session = store.create("alice", kind="session", ttl=timedelta(hours=1))
    assert store.lookup(session, kind="session") == "alice"
    store.lookup(api)
    (info,) = store.list()
    assert info.last_used_at == "2026-01-01T00:00:00+00:00"
    clock.now += timedelta(seconds=30)
    store.lookup(api)  # same minute: not written again
    assert store.list()[0].last_used_at == "2026-01-01T00:00:00+00:00"
    clock.now += timedelta(hours=2)
    assert store.lookup(session, kind="session") is None
    assert store.purge_expired() == 1
    assert store.revoke(info.id) and store.lookup(api) is None
    other = store.create("bob")
    assert store.revoke(other) and not store.revoke(other)
    store.create("carol")
    store.create("carol", kind="session")
    assert store.revoke_user("carol") == 2
    assert store.list("carol") == []


def test_token_create_ttl_and_token_list_with_last_use(tmp_path: Path) -> None:
    """``quicflow token create --ttl`` and ``token list`` on a real config repo and data dir."""
    from click.testing import CliRunner
    from gitrepos import ConfigRepo

    from reconciler import serving

    repo = ConfigRepo(tmp_path / "config")
    repo.commit({"quicflow.yaml": "users:\n  - {username: alice, email: a@example.com}\n"})
    data = str(tmp_path / "data")
    runner = CliRunner()
    made = runner.invoke(
        serving.token, ["create", "alice", "--ttl", "2h", "--repo", str(repo.path), "--data", data]
    )
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    forever = runner.invoke(
        serving.token, ["create", "alice", "--repo", str(repo.path), "--data", data]
    )
    assert forever.exit_code == 0
    bad = runner.invoke(
        serving.token,
        ["create", "alice", "--ttl", "soon", "--repo", str(repo.path), "--data", data],
    )
    assert bad.exit_code == 2 and "--ttl" in bad.output and "not a duration" in bad.output

    listed = runner.invoke(serving.token, ["list", "--data", data]).output.splitlines()
    assert listed[0].split() == ["ID", "USER", "CREATED", "EXPIRES", "LAST", "USED"]
    first, second = (line.split() for line in listed[1:])
    created, expires = datetime.fromisoformat(first[2]), datetime.fromisoformat(first[3])
    assert expires - created == timedelta(hours=2)
    assert first[4] == "never" and second[3:] == ["never", "never"]
    assert token not in "\n".join(listed)

    db = database.Database.open(Path(data))
    try:
        assert tokens.TokenStore(db).lookup(token) == "alice"
        later = Clock()
        later.now = datetime.now(UTC) + timedelta(hours=3)
        assert tokens.TokenStore(db, later).lookup(token) is None  # expired
    finally:
        db.close()
    used = runner.invoke(serving.token, ["list", "alice", "--data", data]).output.splitlines()
    assert used[1].split()[4] != "never"
