"""Fixtures of the notification tests: a running loopback receiver, credentials, a store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alert.receivers import FEISHU_SECRET, LEAKY_TOKEN, WEBHOOK_SECRET, Receiver, serving

from reconciler.credential import model as credential_model
from reconciler.credential.manager import CredentialManager
from reconciler.store.sqlite import SQLiteDatabase as Database


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running loopback receiver (webhook, Feishu, slow endpoints)."""
    async with serving(Receiver()) as running:
        yield running


@pytest.fixture
def credentials(tmp_path: Path) -> Iterator[CredentialManager]:
    """A real credential manager holding the callbacks' secrets (and a leaky token)."""
    manager = CredentialManager.open(tmp_path / "credentials", environ={})

    def token(name: str, value: str, project: str | None = None) -> credential_model.Credential:
        scope = credential_model.Scope(project) if project else credential_model.GLOBAL
        info = credential_model.CredentialInfo(
            name, credential_model.CredentialType.ACCESS_TOKEN, scope
        )
        return credential_model.Credential(info, {"token": credential_model.Secret(value)})

    manager.set_git_credentials(
        [
            token("hook-key", WEBHOOK_SECRET),
            token("feishu-bot", FEISHU_SECRET),
            token("deploy-token", LEAKY_TOKEN, "shop"),
        ]
    )
    yield manager
    manager.close()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """The operational store (a real SQLite file)."""
    db = Database(tmp_path / "store" / "quicflow.db")
    yield db
    db.close()
