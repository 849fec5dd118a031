"""The api_tokens table: digests by kind, deleting by digest, id, user or expiry."""

from __future__ import annotations

from reconciler.store import database, tokens


def test_tokens_and_sessions_by_digest_id_user_and_expiry(db: database.Database) -> None:
    rows = tokens.ApiTokens(db)
    rows.add("a1", "alice", "d-a1", "api", "2026-01-01T00:00:00+00:00", "")
    rows.add("a2", "alice", "d-a2", "session", "2026-01-02T00:00:00+00:00", "2026-01-03")
    rows.add("b1", "bob", "d-b1", "api", "2026-01-03T00:00:00+00:00", "2026-01-04")
    found = rows.find("d-a1", "api")
    assert found is not None and found["username"] == "alice"
    assert rows.find("d-a1", "session") is None
    rows.touch("a1", "2026-01-05")
    assert [(t.id, t.last_used_at) for t in rows.api_tokens()] == [("a1", "2026-01-05"), ("b1", "")]
    assert [t.id for t in rows.api_tokens("bob")] == ["b1"]
    assert not rows.delete_api_token("a2")  # a session is not deleted by id
    assert rows.delete_expired("2026-01-03") == 1
    assert rows.delete_digest("d-b1") and not rows.delete_digest("d-b1")
    assert rows.delete_user("alice") == 1
    assert rows.api_tokens() == []
