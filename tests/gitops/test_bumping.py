"""Version-bump commits: the text edit, the message and its trailers, and the commit itself
in real Git — kept when it can be published, taken back when the remote refuses the push.

The refusing remote is a real ``git daemon`` serving the repo read-only (``gitdaemon``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from gitdaemon import bare_copy, read_only_daemon
from gitrepos import ConfigRepo, git
from releasing import USERS

from reconciler.errors import SourceError
from reconciler.gitops import bumping, model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository

ENV_FILE = "projects/app/environments/dev.yaml"
FILES = {
    "quicflow.yaml": USERS,
    "projects/app/project.yaml": (
        "members: [{user: bob, role: owner}]\ndeploy: {type: script, script: {run: 'true'}}\n"
    ),
    ENV_FILE: '# dev\nversion: "1.0"\nvariables:\n  version: keep\ntargets: [{local: t1}]\n',
}


def _dev(repo: GitRepository) -> model.Environment:
    env = Loader(repo).load("main").raise_for_problems().environment("app", "dev")
    assert env is not None
    return env


def test_with_version_replaces_only_the_top_level_line() -> None:
    text = FILES[ENV_FILE]
    assert bumping.with_version(text, "2.0") == text.replace('version: "1.0"', 'version: "2.0"')
    assert bumping.with_version("{version: '1.0', targets: []}\n", "2.0") is None


def test_with_version_keeps_an_odd_tag_name_one_yaml_string() -> None:
    odd = 'v1"#\\1'  # quotes, a comment sign and a backslash: all legal in a tag name
    bumped = bumping.with_version(FILES[ENV_FILE], odd)
    assert bumped is not None and yaml.safe_load(bumped)["version"] == odd


def test_deploy_message_names_trigger_webhook_delivery_and_actor() -> None:
    text = bumping.deploy_message(
        "app/dev", "abc123", "webhook", "Ada <ada@example.com>", webhook="app.gh", delivery="d-1"
    )
    subject = text.splitlines()[0]
    assert subject == "Deploy abc123 to app/dev"
    assert bumping.trailers(text) == {
        "Quicflow-Deploy": ("app/dev",),
        "Quicflow-Trigger": ("webhook",),
        "Quicflow-Webhook": ("app.gh",),
        "Quicflow-Delivery": ("d-1",),
        "Quicflow-Actor": ("Ada <ada@example.com>",),
    }
    manual = bumping.trailers(bumping.deploy_message("app/dev", "2.0", "manual", "olga"))
    assert manual == {
        "Quicflow-Deploy": ("app/dev",),
        "Quicflow-Trigger": ("manual",),
        "Quicflow-Actor": ("olga",),
    }


def test_a_value_from_a_payload_cannot_forge_a_trailer() -> None:
    actor = "Eve\nQuicflow-Actor: admin"
    text = bumping.deploy_message("app/dev", "2.0", "webhook", actor, webhook="app.gh")
    assert bumping.trailers(text)["Quicflow-Actor"] == ("Eve Quicflow-Actor: admin",)


def test_a_bump_is_committed_and_the_checked_out_file_follows(tmp_path: Path) -> None:
    config = ConfigRepo(tmp_path / "config")
    config.commit(FILES)
    repo = GitRepository.open(config.path)
    message = bumping.deploy_message("app/dev", "2.0", "manual", "bob")
    commit = bumping.commit_version(repo, "main", _dev(repo), "2.0", message)
    assert git(config.path, "rev-parse", "main") == commit
    assert (
        git(config.path, "log", "-1", "--format=%an|%s", "main") == "quicflow|Deploy 2.0 to app/dev"
    )
    assert 'version: "2.0"' in config.read(ENV_FILE) and "version: keep" in config.read(ENV_FILE)
    assert git(config.path, "status", "--porcelain") == ""
    assert _dev(repo).version == "2.0"


def test_a_file_without_a_version_line_is_refused(tmp_path: Path) -> None:
    config = ConfigRepo(tmp_path / "config")
    config.commit({**FILES, ENV_FILE: "{version: '1.0', targets: [{local: t1}]}\n"})
    repo = GitRepository.open(config.path)
    head = git(config.path, "rev-parse", "main")
    with pytest.raises(bumping.NoVersionLine, match="no top-level 'version:' line"):
        bumping.commit_version(repo, "main", _dev(repo), "2.0", "Deploy 2.0\n")
    assert git(config.path, "rev-parse", "main") == head


def test_a_refused_push_leaves_no_commit_behind(tmp_path: Path) -> None:
    """A mirror of a read-only remote: the bump is taken back, the branch is where it was."""
    config = ConfigRepo(tmp_path / "config")
    head = config.commit(FILES)
    bare_copy(config.path, tmp_path / "served" / "config.git")
    with read_only_daemon(tmp_path / "served") as url:
        mirror = GitRepository.open(f"{url}/config.git", cache_dir=tmp_path / "cache")
        with pytest.raises(SourceError, match="push of main"):
            bumping.commit_version(mirror, "main", _dev(mirror), "2.0", "Deploy 2.0\n")
        assert mirror.ref_target("refs/heads/main") == head
    assert git(tmp_path / "served" / "config.git", "rev-parse", "main") == head


def test_a_refused_push_restores_a_checked_out_clone(tmp_path: Path) -> None:
    """A working clone whose origin refuses pushes: branch, index and file go back."""
    config = ConfigRepo(tmp_path / "config")
    head = config.commit(FILES)
    bare_copy(config.path, tmp_path / "served" / "config.git")
    with read_only_daemon(tmp_path / "served") as url:
        git(tmp_path, "clone", "-q", f"{url}/config.git", "clone")
        clone = GitRepository.open(tmp_path / "clone")
        with pytest.raises(SourceError):
            bumping.commit_version(clone, "main", _dev(clone), "2.0", "Deploy 2.0\n")
    assert git(tmp_path / "clone", "rev-parse", "main") == head
    assert (tmp_path / "clone" / ENV_FILE).read_text() == FILES[ENV_FILE]
    assert git(tmp_path / "clone", "status", "--porcelain") == ""
