"""Sealed credential rows and the audit: creators kept on replace, guarded re-seal, last use."""

from __future__ import annotations

from reconciler.store import credentials, database


def _put(rows: credentials.SealedCredentials, actor: str, now: str, key_id: str = "k1") -> bool:
    return rows.put(
        "global:x",
        name="x",
        project=None,
        kind="access_token",
        description="",
        actor=actor,
        now=now,
        key_id=key_id,
        nonce=b"n",
        ciphertext=b"c",
    )[2]


def test_a_replaced_record_keeps_its_creator(db: database.Database) -> None:
    rows = credentials.SealedCredentials(db)
    assert _put(rows, "alice", "t1")
    assert not _put(rows, "bob", "t2", key_id="k2")
    row = rows.get("global:x")
    assert row is not None
    assert (row["created_by"], row["created_at"], row["updated_at"], row["key_id"]) == (
        "alice",
        "t1",
        "t2",
        "k2",
    )
    assert rows.count_by_key() == {"k2": 1} and rows.ids_under(["k2"]) == ["global:x"]
    assert [r["id"] for r in rows.infos()] == ["global:x"]
    assert rows.delete("global:x") and not rows.delete("global:x")


def test_reseal_only_while_still_under_the_old_key(db: database.Database) -> None:
    rows = credentials.SealedCredentials(db)
    _put(rows, "alice", "t1")
    assert rows.count_not_under("k2") == 1 and [r["id"] for r in rows.not_under("k2")] == [
        "global:x"
    ]
    assert rows.reseal("global:x", "k1", lambda nonce, ciphertext: ("k2", b"n2", ciphertext + b"2"))
    assert not rows.reseal("global:x", "k1", lambda nonce, ciphertext: ("k3", b"", b""))
    row = rows.get("global:x")
    assert row is not None and (row["key_id"], row["nonce"], row["ciphertext"]) == (
        "k2",
        b"n2",
        b"c2",
    )
    assert rows.count_not_under("k2") == 0


def test_audit_entries_newest_first_and_the_last_use(db: database.Database) -> None:
    audit = credentials.CredentialAudit(db)
    first = audit.append("global:x", "create", "user:a", "t1")
    second = audit.append("global:x", "use", "run:1", "t2", "10.0.0.1", used=True)
    audit.append("global:y", "use", "run:1", "t3", used=True)
    assert second == first + 1
    assert [(e["id"], e["source_ip"]) for e in audit.entries("global:x")] == [
        (second, "10.0.0.1"),
        (first, None),
    ]
    assert [e["id"] for e in audit.entries("global:x", limit=1)] == [second]
    assert audit.last_used() == {"global:x": "t2", "global:y": "t3"}
    audit.append("global:x", "delete", "user:a", "t4", deleted=True)
    assert audit.last_used() == {"global:y": "t3"}
