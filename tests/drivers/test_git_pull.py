"""The ``git_pull`` deploy type end to end: a real app repo, a real reconciler, a local target.

The app repo has two tags; the deploy checks one out into ``directory`` on the target
and runs ``restart`` there. A relative ``directory`` is relative to the target's work
dir — the fetch and the restart must agree on it, whatever the reconciler's own
working directory is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo, git

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState

pytestmark = pytest.mark.integration

RESTART = (
    'pwd -P > "$QUICFLOW_WORK_DIR/restarted-in"; echo "$QUICFLOW_GIT_DIR" > "$QUICFLOW_WORK_DIR/git-dir"; '
    'cat app.txt > "$QUICFLOW_WORK_DIR/served"'
)


def app_repo(path: Path) -> Path:
    """An app repo with tags 1.0 and 2.0, each changing ``app.txt``."""
    repo = ConfigRepo(path)
    for version in ("1.0", "2.0"):
        repo.commit({"app.txt": f"app {version}\n"}, message=f"release {version}")
        git(path, "tag", version)
    return path


def project_yaml(app: Path, directory: str) -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
repo:
  url: "{app}"
deploy:
  type: git_pull
  git_pull:
    directory: "{directory}"
    restart: '{RESTART}'
"""


async def release(config: ConfigRepo, data: Path, version: str, app: Path, directory: str) -> Run:
    config.commit(
        {
            "quicflow.yaml": "users:\n  - {username: bob, email: bob@example.com}\n",
            "projects/app/project.yaml": project_yaml(app, directory),
            "projects/app/environments/prod.yaml": f'version: "{version}"\n'
            "targets:\n  - {local: t1}\n",
        }
    )
    rec = Reconciler(GitRepository.open(config.path), data)
    try:
        (run,) = (await rec.reconcile_once()).runs
    finally:
        await rec.close()
    return run


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The reconciler's working directory: neither the data dir nor the target's."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


async def test_restart_with_a_relative_directory_runs_in_the_checkout(
    tmp_path: Path, elsewhere: Path
) -> None:
    app = app_repo(tmp_path / "app")
    config, data = ConfigRepo(tmp_path / "config"), tmp_path / "data"
    work = data / "targets" / "app" / "prod" / "t1"

    run = await release(config, data, "1.0", app, "checkout")
    assert run.state is RunState.SUCCEEDED, run.error
    checkout = (work / "checkout").resolve()
    assert (checkout / "app.txt").read_text() == "app 1.0\n"
    assert (work / "restarted-in").read_text().strip() == str(checkout)
    # The restart script is told the checkout's absolute path, not the relative setting.
    assert (work / "git-dir").read_text().strip() == str(checkout)
    assert (work / "served").read_text() == "app 1.0\n"
    # Nothing was created relative to the reconciler's own working directory.
    assert list(elsewhere.iterdir()) == []

    run = await release(config, data, "2.0", app, "checkout")
    assert run.state is RunState.SUCCEEDED, run.error
    assert (work / "served").read_text() == "app 2.0\n"
    assert list(elsewhere.iterdir()) == []


async def test_restart_with_an_absolute_directory_runs_there(
    tmp_path: Path, elsewhere: Path
) -> None:
    app = app_repo(tmp_path / "app")
    config, data = ConfigRepo(tmp_path / "config"), tmp_path / "data"
    work = data / "targets" / "app" / "prod" / "t1"
    absolute = (tmp_path / "srv" / "app").resolve()

    run = await release(config, data, "1.0", app, str(absolute))
    assert run.state is RunState.SUCCEEDED, run.error
    assert (work / "restarted-in").read_text().strip() == str(absolute)
    assert (work / "served").read_text() == "app 1.0\n"
    assert list(elsewhere.iterdir()) == []
