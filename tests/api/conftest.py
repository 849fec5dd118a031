"""Fixtures for the API tests: a real config repo with SOPS credentials, real stores, real uvicorn.

The config repo (``API_FILES``) has one user per role on project ``app`` (an admin,
owner, maintainer, developer, viewer) and a non-member who owns project ``other``;
``app`` declares webhooks for all three providers and a schedule. Webhook secrets are
real ``credentials.sops.yaml`` files encrypted for an age identity made in the test
session and read through a real ``CredentialManager``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from api import configs
from api.configs import API_FILES
from api.recording import RecordingEngine
from api.servers import LiveServer, serving
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.api.app import ServerSettings, create_app
from reconciler.credential import age, documents, sealing, sops
from reconciler.credential.manager import CredentialManager
from reconciler.store.database import Database


def sops_file(recipient: str, credentials: dict[str, dict[str, str]]) -> str:
    """A credentials.sops.yaml encrypted for ``recipient``."""
    tree = sops.encrypt_tree({"credentials": credentials}, [recipient], documents.RULES)
    return sops.dump_yaml(tree)


@pytest.fixture(scope="session")
def age_identity() -> tuple[str, str]:
    return age.generate_identity()


@pytest.fixture(scope="session")
def credential_files(age_identity: tuple[str, str]) -> dict[str, str]:
    _, recipient = age_identity
    return {
        "credentials.sops.yaml": sops_file(
            recipient,
            {"config-hook": {"type": "access_token", "token": configs.CONFIG_HOOK_SECRET}},
        ),
        "projects/app/credentials.sops.yaml": sops_file(
            recipient, {"app-hook": {"type": "access_token", "token": configs.HOOK_SECRET}}
        ),
    }


@pytest.fixture
def api_repo(config_repo: ConfigRepo, credential_files: dict[str, str]) -> ConfigRepo:
    config_repo.commit({**API_FILES, **credential_files}, message="api test config")
    return config_repo


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "data" / "quicflow.db")
    yield db
    db.close()


@pytest.fixture
def credentials(
    tmp_path: Path,
    credential_files: dict[str, str],
    age_identity: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[CredentialManager]:
    for name in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", sealing.KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    manager = CredentialManager.open(
        tmp_path / "credentials", {sealing.KEY_ENV: secrets.token_bytes(32).hex()}
    )
    manager.load_git(credential_files, [age_identity[0]], backend="native")
    yield manager
    manager.close()


@pytest.fixture
def engine(database: Database, api_repo: ConfigRepo) -> RecordingEngine:
    """The engine the app talks to; swap in the real Reconciler here at integration."""
    return RecordingEngine(database, api_repo.path)


@pytest.fixture
def settings(database: Database, credentials: CredentialManager) -> ServerSettings:
    return ServerSettings(database=database, credentials=credentials, run_scheduler=False)


@pytest.fixture
def app(engine: RecordingEngine, settings: ServerSettings) -> Starlette:
    return create_app(engine, settings)


@pytest.fixture
async def server(app: Starlette) -> AsyncIterator[LiveServer]:
    async with serving(app) as live:
        yield live


@pytest.fixture
def tokens(app: Starlette) -> dict[str, str]:
    """One API token per user of the test config."""
    return {
        name: app.state.tokens.create(name)
        for name in ("alice", "olga", "mike", "dev", "vic", "nora")
    }
