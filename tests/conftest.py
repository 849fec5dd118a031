"""Shared fixtures: real Git config repositories made with the git CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gitrepos import EXAMPLE, MINIMAL, ConfigRepo


@pytest.fixture
def config_repo(tmp_path: Path) -> ConfigRepo:
    """An empty config repo (no commits yet)."""
    return ConfigRepo(tmp_path / "config")


@pytest.fixture
def example_repo(tmp_path: Path) -> ConfigRepo:
    """A repo whose first commit is a copy of examples/config-repo."""
    repo = ConfigRepo(tmp_path / "example")
    shutil.copytree(EXAMPLE, repo.path, dirs_exist_ok=True)
    repo.commit(message="import the example config repo")
    return repo


@pytest.fixture
def minimal_files() -> dict[str, str]:
    """A small valid config repo: one project (app) with dev and prod."""
    return dict(MINIMAL)
