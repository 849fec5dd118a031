"""The sealed AES-256-GCM store: keys from the environment, key ids, rotation."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.credential import model, sealing
from reconciler.store.database import Database

KEY_A = secrets.token_bytes(32)
KEY_B = secrets.token_bytes(32)


def _open(
    data_dir: Path, current: bytes | None, previous: bytes | None = None
) -> sealing.SealedStore:
    env = {}
    if current is not None:
        env[sealing.KEY_ENV] = current.hex()
    if previous is not None:
        # Base64 here, hex above: both spellings are accepted.
        env[sealing.PREVIOUS_KEY_ENV] = base64.b64encode(previous).decode()
    return sealing.SealedStore(Database.open(data_dir), sealing.SealingKeys.from_env(env))


def _fill(store: sealing.SealedStore, count: int = 3) -> dict[str, str]:
    tokens = {}
    for i in range(count):
        info, created = store.put(
            f"token-{i}",
            model.Scope("shop") if i % 2 else model.GLOBAL,
            model.CredentialType.ACCESS_TOKEN,
            {"token": f"secret-token-{i}"},
            actor="user:alice",
        )
        assert created
        tokens[info.id] = f"secret-token-{i}"
    return tokens


def _key_ids(data_dir: Path) -> set[str]:
    db = Database.open(data_dir)
    try:
        return {row["key_id"] for row in db.query("SELECT key_id FROM sealed_credentials")}
    finally:
        db.close()


def test_parse_key_accepts_hex_and_base64_and_never_echoes() -> None:
    key = secrets.token_bytes(32)
    assert sealing.parse_key(key.hex()) == key
    assert sealing.parse_key(base64.b64encode(key).decode()) == key
    assert sealing.parse_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    bad = "not-a-key-" + key.hex()[:20]
    with pytest.raises(errors.CredentialError) as caught:
        sealing.parse_key(bad)
    assert "QUIC_FLOW_SECRET_KEY must be 32 bytes" in str(caught.value)
    assert bad not in str(caught.value)
    with pytest.raises(errors.CredentialError):
        sealing.parse_key(secrets.token_bytes(16).hex())
    assert sealing.key_id(key) == __import__("hashlib").sha256(key).hexdigest()[:16]


def test_round_trip_and_database_holds_no_plaintext(tmp_path: Path) -> None:
    store = _open(tmp_path, KEY_A)
    tokens = _fill(store)
    for credential_id, token in tokens.items():
        assert store.get(credential_id).token == token
    store.database.close()
    raw = (tmp_path / "quicflow.db").read_bytes()
    wal = tmp_path / "quicflow.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert not any(t.encode() in raw for t in tokens.values())
    reopened = _open(tmp_path, KEY_A)
    assert reopened.database.query("PRAGMA journal_mode")[0][0] == "wal"
    assert [i.id for i in reopened.infos()] == sorted(tokens)
    reopened.database.close()


def test_rotation_from_a_to_b(tmp_path: Path) -> None:
    store = _open(tmp_path, KEY_A)
    tokens = _fill(store)
    store.database.close()
    assert _key_ids(tmp_path) == {sealing.key_id(KEY_A)}

    # Restart with B as the key and A as the previous one: everything is re-sealed.
    store = _open(tmp_path, KEY_B, previous=KEY_A)
    assert store.start() == len(tokens)
    assert {cid: store.get(cid).token for cid in tokens} == tokens
    store.database.close()
    assert _key_ids(tmp_path) == {sealing.key_id(KEY_B)}

    # Restart with B alone: still all readable.
    store = _open(tmp_path, KEY_B)
    assert store.start() == 0
    assert {cid: store.get(cid).token for cid in tokens} == tokens
    store.database.close()


def test_rotation_is_resumable(tmp_path: Path) -> None:
    store = _open(tmp_path, KEY_A)
    tokens = _fill(store, 5)
    store.database.close()
    store = _open(tmp_path, KEY_B, previous=KEY_A)
    # Stop after two records, as a crash would: the others stay under A and readable.
    assert store.rotate(limit=2) == 2
    assert store.pending_rotation() == 3
    assert {cid: store.get(cid).token for cid in tokens} == tokens
    store.database.close()
    assert _key_ids(tmp_path) == {sealing.key_id(KEY_A), sealing.key_id(KEY_B)}
    store = _open(tmp_path, KEY_B, previous=KEY_A)
    assert store.start() == 3
    assert store.pending_rotation() == 0
    store.database.close()


def test_missing_or_unknown_key_refuses_to_start(tmp_path: Path) -> None:
    empty = _open(tmp_path / "empty", None)
    assert empty.start() == 0  # no sealed credentials: no key needed
    with pytest.raises(errors.CredentialError, match="QUIC_FLOW_SECRET_KEY is not set"):
        empty.put("x", model.GLOBAL, model.CredentialType.ACCESS_TOKEN, {"token": "t"})
    empty.database.close()

    store = _open(tmp_path, KEY_A)
    _fill(store, 1)
    store.database.close()
    store = _open(tmp_path, None)
    with pytest.raises(errors.CredentialError) as caught:
        store.start()
    assert "QUIC_FLOW_SECRET_KEY is not set" in str(caught.value)
    assert "1 sealed credential" in str(caught.value)
    store.database.close()
    store = _open(tmp_path, KEY_B)  # B without A as previous
    with pytest.raises(errors.CredentialError) as caught:
        store.start()
    assert f"key id(s) {sealing.key_id(KEY_A)}" in str(caught.value)
    assert "global:token-0" in str(caught.value)
    store.database.close()
    with pytest.raises(errors.CredentialError, match="QUIC_FLOW_SECRET_KEY_PREVIOUS must be"):
        sealing.SealingKeys.from_env(
            {sealing.KEY_ENV: KEY_A.hex(), sealing.PREVIOUS_KEY_ENV: "short"}
        )


def test_ciphertext_moved_to_another_record_does_not_open(tmp_path: Path) -> None:
    store = _open(tmp_path, KEY_A)
    _fill(store, 2)
    with store.database.transaction() as db:
        nonce, ciphertext = db.execute(
            "SELECT nonce, ciphertext FROM sealed_credentials WHERE id = 'global:token-0'"
        ).fetchone()
        db.execute(
            "UPDATE sealed_credentials SET nonce = ?, ciphertext = ? WHERE id = 'project:shop:token-1'",
            (nonce, ciphertext),
        )
    with pytest.raises(errors.CredentialError, match="project:shop:token-1: ciphertext does not"):
        store.get("project:shop:token-1")
    store.database.close()


def test_keys_never_in_repr() -> None:
    keys = sealing.SealingKeys(KEY_A, KEY_B)
    assert KEY_A.hex() not in repr(keys) and repr(KEY_A) not in repr(keys)
