"""Fixtures of the builder tests: the real registry, an app repo, a Builder on a fresh store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dockerenv import Login, Registry, make_app_repo, registry_or_skip, remove_test_objects
from gitrepos import ConfigRepo

from reconciler.builder import docker_cli
from reconciler.builder.building import Builder
from reconciler.log.store import LogStore
from reconciler.store.sqlite import SQLiteDatabase as Database


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """The authenticated local registry; test images are removed afterwards."""
    found = registry_or_skip()
    yield found
    remove_test_objects(found.docker)


@pytest.fixture
def app_repo(tmp_path: Path, registry: Registry) -> ConfigRepo:
    """An empty application repository with busybox in its work tree."""
    return make_app_repo(tmp_path / "app", registry.busybox)


@pytest.fixture
def logins(registry: Registry) -> dict[str, Login]:
    """Credentials by name, as the credential store would hand them out."""
    return {
        "registry": Login(registry.username, registry.password),
        "bad-registry": Login(registry.username, "not-the-password-4711"),
    }


@pytest.fixture
async def builder(tmp_path: Path, registry: Registry, logins: dict) -> AsyncIterator[Builder]:
    """A Builder on a fresh SQLite store, using the BuildKit-capable CLI."""
    db = Database(tmp_path / "data" / "quicflow.db")

    def lookup(name: str, project: str) -> Login:
        return logins[name]

    built = Builder(
        db,
        LogStore(db),
        tmp_path / "data",
        credentials=lookup,
        docker=docker_cli.DockerCli(registry.docker),
    )
    yield built
    await built.close()
    db.close()
