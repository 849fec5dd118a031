"""Fixtures for the API tests: the real Reconciler on a real config repo, behind real uvicorn.

The config repo (``api.configs``) has one user per role on project ``app`` (an admin,
owner, maintainer, developer, viewer) and a non-member who owns project ``other``;
``app`` declares webhooks for all three providers and a schedule. Webhook secrets are
real ``credentials.sops.yaml`` files encrypted for an age identity made in the test
session and read by the engine's own ``CredentialManager``.

Each module commits its repo once (``api_template``; a module picks its config with
``api_files`` and may release versions first with ``api_releases``); each test works on
a copy of that repo and data directory, so runs and commits never leak between tests.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from api import configs, driving
from api.servers import LiveServer, real_engine, server_settings, serving
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.api.app import ServerSettings, create_app
from reconciler.credential import age, documents, sops
from reconciler.credential.manager import CredentialManager
from reconciler.engine.reconciling import Reconciler
from reconciler.store.sqlite import SQLiteDatabase as Database


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


@dataclass(frozen=True)
class Template:
    """A module's config repo and data directory, made once and copied into each test."""

    repo: Path
    data: Path


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    """The config of this module's repo (modules that need gates use ``GATED_FILES``)."""
    return configs.API_FILES


@pytest.fixture(scope="module")
def api_releases() -> tuple[str, ...]:
    """Versions released in turn to app/dev and app/prod before each test: none by default."""
    return ()


@pytest.fixture(scope="module")
def api_template(
    tmp_path_factory: pytest.TempPathFactory,
    api_files: Mapping[str, str],
    api_releases: tuple[str, ...],
    credential_files: dict[str, str],
    age_identity: tuple[str, str],
) -> Template:
    root = tmp_path_factory.mktemp("api")
    repo = ConfigRepo(root / "config")
    repo.commit({**api_files, **credential_files}, message="api test config")
    if api_releases:
        driving.in_thread(
            driving.release_history(repo.path, root / "data", age_identity[0], api_releases)
        )
    return Template(repo.path, root / "data")


@pytest.fixture
def api_repo(api_template: Template, tmp_path: Path) -> ConfigRepo:
    """This test's copy of the module's config repo (commit to it freely)."""
    return ConfigRepo.copy_of(api_template.repo, tmp_path / "config")


@pytest.fixture
def data_dir(api_template: Template, tmp_path: Path) -> Path:
    """This test's data directory: a copy of the module's, if it released anything."""
    data = tmp_path / "data"
    if api_template.data.exists():
        shutil.copytree(api_template.data, data)
    return data


@pytest.fixture
async def engine(
    api_repo: ConfigRepo, data_dir: Path, age_identity: tuple[str, str]
) -> AsyncIterator[Reconciler]:
    """The real Reconciler on this test's repo; its runs are cancelled when the test ends."""
    async with real_engine(api_repo.path, data_dir, age_identity[0]) as reconciler:
        yield reconciler


@pytest.fixture
async def settings(engine: Reconciler) -> ServerSettings:
    return await server_settings(engine)


@pytest.fixture
def database(engine: Reconciler) -> Database:
    return engine.db


@pytest.fixture
def credentials(settings: ServerSettings) -> CredentialManager:
    assert settings.credentials is not None
    return settings.credentials


@pytest.fixture
def app(engine: Reconciler, settings: ServerSettings) -> Starlette:
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
