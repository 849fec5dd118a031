"""Image automation without Docker: which environments follow a build, the bump, the commit.

Build records are made by hand here; the real build → bump → deploy path is in
tests/builder/test_engine_builds.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo, git
from releasing import USERS

from reconciler.builds import BuildRecord, BuildStatus
from reconciler.engine import image_builds
from reconciler.gitops import model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository

PROJECT = """\
members: [{user: bob, role: owner}]
repo: {url: "https://example.com/shop.git"}
build: {enabled: true, target_image: "registry.example/shop:{{ version }}"}
deploy: {type: script, script: {run: "true"}}
"""
FILES = {
    "quicflow.yaml": USERS,
    "projects/shop/project.yaml": PROJECT,
    "projects/shop/environments/prod.yaml": (
        '# production\nversion: "1.0"\nauto_update: true\ntargets: [{local: t1}]\n'
    ),
    "projects/shop/environments/qa.yaml": 'version: "1.0"\nauto_update: true\n'
    "overrides: {build: {enabled: false}}\ntargets: [{local: t1}]\n",
    "projects/shop/environments/stage.yaml": 'version: "1.0"\ntargets: [{local: t1}]\n',
}


def _record(status: BuildStatus = BuildStatus.SUCCESS, version: str = "1.1") -> BuildRecord:
    return BuildRecord(
        id="b-1", project="shop", version=version, status=status, started_at="", commit="c" * 40
    )


@pytest.fixture
def config(tmp_path: Path) -> tuple[ConfigRepo, GitRepository, model.DesiredState]:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(FILES)
    git_repo = GitRepository.open(str(repo.path))
    desired = Loader(git_repo).load().raise_for_problems()
    return repo, git_repo, desired


def test_bumped_replaces_only_the_top_level_version_line() -> None:
    text = '# c\nversion: "1.0"\nvariables:\n  version: keep\n'
    assert image_builds.bumped(text, "2.0") == '# c\nversion: "2.0"\nvariables:\n  version: keep\n'
    assert image_builds.bumped("targets: []\n", "2.0") is None


def test_auto_updating_environments_and_build_settings(config) -> None:  # noqa: ANN001
    _, _, desired = config
    envs = image_builds.auto_update_environments(desired, "shop", "1.1")
    assert [e.name for e in envs] == ["prod", "qa"]
    assert image_builds.auto_update_environments(desired, "shop", "1.0") == []
    assert image_builds.auto_update_environments(desired, "nope", "1.1") == []
    shop = desired.projects["shop"]
    assert image_builds.build_environment(shop).name == "prod"  # first by name that builds
    with pytest.raises(ValueError, match="no enabled build settings"):
        image_builds.build_environment(shop, "qa")
    with pytest.raises(KeyError):
        image_builds.build_environment(shop, "nope")
    request = image_builds.request_for(shop, shop.environments["prod"], "1.1", trigger="webhook")
    assert (request.project, request.version, request.trigger) == ("shop", "1.1", "webhook")


async def test_a_successful_build_commits_one_bump_per_following_environment(config) -> None:  # noqa: ANN001
    repo, git_repo, desired = config
    asked: list[str] = []

    async def reconcile_now(reason: str) -> None:
        asked.append(reason)

    automation = image_builds.ImageAutomation(git_repo, lambda: desired, reconcile_now)
    request = image_builds.request_for(
        desired.projects["shop"], desired.projects["shop"].environments["prod"], "1.1"
    )
    before = git(repo.path, "rev-parse", "main")
    # Failed builds and pipeline builds are not followed.
    assert await automation.after_build(_record(BuildStatus.FAILED), request) == []
    pipeline = image_builds.request_for(
        desired.projects["shop"],
        desired.projects["shop"].environments["prod"],
        "1.1",
        trigger="pipeline",
    )
    assert await automation.after_build(_record(), pipeline) == []
    assert git(repo.path, "rev-parse", "main") == before and asked == []

    commits = await automation.after_build(_record(), request)
    assert len(commits) == 2 and git(repo.path, "rev-parse", "main") == commits[-1]
    log = git(repo.path, "log", "--format=%an|%s", f"{before}..main").splitlines()
    assert log == [
        "quicflow|Deploy 1.1 to shop/qa (build b-1)",
        "quicflow|Deploy 1.1 to shop/prod (build b-1)",
    ]
    assert repo.read("projects/shop/environments/prod.yaml").startswith(
        '# production\nversion: "1.1"\n'
    )
    assert 'version: "1.0"' in repo.read("projects/shop/environments/stage.yaml")
    assert asked == ["build b-1: shop 1.1"]
