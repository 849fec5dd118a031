"""Agent tokens: stored hashed, verified in constant time, revocable from another process."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from reconciler.hub import tokens


def test_create_verify_revoke(tmp_path: Path) -> None:
    store = tokens.TokenStore(tmp_path)
    token = store.create("web-1")
    assert store.verify("web-1", token)
    assert not store.verify("web-1", token + "x") and not store.verify("web-2", token)
    assert not store.verify("web-1", "")
    assert store.revoke("web-1") and not store.revoke("web-1")
    assert not store.verify("web-1", token)


def test_tokens_are_stored_hashed_and_private(tmp_path: Path) -> None:
    token = tokens.TokenStore(tmp_path).create("web-1")
    path = tmp_path / tokens.TOKENS_FILE
    assert token not in path.read_text()
    assert set(json.loads(path.read_text())["agents"]["web-1"]) == {"sha256", "created"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_recreating_replaces_the_old_token(tmp_path: Path) -> None:
    store = tokens.TokenStore(tmp_path)
    old = store.create("a")
    new = store.create("a")
    assert old != new and store.verify("a", new) and not store.verify("a", old)


def test_changes_by_another_store_are_picked_up(tmp_path: Path) -> None:
    hub_side = tokens.TokenStore(tmp_path)
    token = hub_side.create("a")
    assert not hub_side.reload_if_changed()
    tokens.TokenStore(tmp_path).revoke("a")  # e.g. the CLI in another process
    assert hub_side.reload_if_changed()
    assert not hub_side.verify("a", token) and hub_side.names() == []


@pytest.mark.parametrize("name", ["", "-dash", "has space", "a/b", "x" * 200])
def test_agent_names_are_checked(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid agent name"):
        tokens.TokenStore(tmp_path).create(name)


def test_a_token_issued_by_another_hub_is_registered_by_its_hash(tmp_path: Path) -> None:
    """An agent serving several replicas has one token: one hub issues it, the others take it."""
    token = tokens.TokenStore(tmp_path / "a").create("web-1")
    other = tokens.TokenStore(tmp_path / "b")
    other.register("web-1", token)
    assert other.verify("web-1", token) and not other.verify("web-1", token + "x")
    assert token not in (tmp_path / "b" / tokens.TOKENS_FILE).read_text()
    for weak in ("qfa_short", "x" * 31, "a" * 20 + " " + "b" * 20):
        with pytest.raises(ValueError, match="not an agent token"):
            other.register("web-2", weak)
    with pytest.raises(ValueError, match="invalid agent name"):
        other.register("has space", token)
    assert other.names() == ["web-1"]
