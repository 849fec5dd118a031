"""Webhook and API deploys stick, the GitOps way — the real engine, real HTTP, real Git.

- Where the reconciler may push (here: the config repo itself, no remote), a manual API
  deploy or a webhook deploy of a version Git does not name commits the version bump
  first, with trailers naming the trigger, webhook, delivery and actor; the run is made
  from that commit, so the next poll finds nothing to do. A later change in Git is
  released as any other.
- Where it may not (a remote served read-only by a real ``git daemon``: the push is
  refused), the run pins the environment instead: nothing is committed, the plan holds
  it as ``pinned`` (``quicflow plan``, the JSON API, the page, ``quicflow history``
  show the pin), the next poll leaves it, and a later change in Git releases Git's
  version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api.servers import LiveServer, server_settings, serving
from api.test_webhooks import HOOK, github_headers, github_push
from gitdaemon import bare_copy, read_only_daemon
from gitrepos import ROOT, ConfigRepo, git

from reconciler.api.app import create_app
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import bumping, planning
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState, Trigger

DEV = "projects/app/environments/dev.yaml"
DEPLOY = "/api/release/projects/app/environments/dev/deploy"
SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"


def dev_action(engine: Reconciler) -> planning.Action:
    (action,) = engine.plan().only("app", "dev").actions
    return action


async def test_an_api_deploy_is_committed_to_git_and_survives_the_next_poll(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo, tokens: dict[str, str]
) -> None:
    before = git(api_repo.path, "rev-parse", "main")
    async with server.client(tokens["olga"]) as client:
        answer = await client.post(DEPLOY, json={"version": "1.1.0"})
    assert answer.status_code == 202, answer.text
    run = answer.json()
    commit = run["detail"]["bump_commit"]
    assert "pin" not in run["detail"]
    assert git(api_repo.path, "rev-parse", "main") == commit
    assert git(api_repo.path, "rev-parse", f"{commit}^") == before
    assert run["config_commit"] == commit  # the run applies the commit that asked for it
    message = git(api_repo.path, "log", "-1", "--format=%B", commit)
    assert message.splitlines()[0] == "Deploy 1.1.0 to app/dev"
    assert bumping.trailers(message) == {
        "Quicflow-Deploy": ("app/dev",),
        "Quicflow-Trigger": ("manual",),
        "Quicflow-Actor": ("olga",),
    }
    assert 'version: "1.1.0"' in api_repo.read(DEV)
    assert git(api_repo.path, "status", "--porcelain") == ""  # the work tree followed
    await engine.wait_idle()
    done = engine.runs.get(run["id"])
    assert done is not None and done.state is RunState.SUCCEEDED

    # The next poll: Git and the state ref agree, nothing is undone.
    report = await engine.reconcile_once(only="app/dev")
    assert report.runs == [] and report.skipped == []
    action = dev_action(engine)
    assert (action.kind, action.reason) == (planning.ActionKind.NONE, planning.Reason.UNCHANGED)
    assert engine.deployed()[("app", "dev")].version == "1.1.0"

    # Git moves on: an engineer's commit is released as any other.
    api_repo.commit({DEV: api_repo.read(DEV).replace('"1.1.0"', '"1.2.0"')}, message="1.2.0")
    report = await engine.reconcile_once(only="app/dev")
    (released,) = report.runs
    assert (released.version, released.trigger, released.state) == (
        "1.2.0",
        Trigger.POLL,
        RunState.SUCCEEDED,
    )


async def test_a_webhook_deploy_commits_with_its_delivery_and_pusher(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo
) -> None:
    body = github_push()
    async with server.client() as client:
        answer = await client.post(
            HOOK.format("app.gh"), content=body, headers=github_headers(body, delivery="d-77")
        )
    assert answer.status_code == 202, answer.text
    run = engine.runs.get(answer.json()["run_id"])
    assert run is not None and run.trigger is Trigger.WEBHOOK and run.version == SHA
    commit = run.detail["bump_commit"]
    assert git(api_repo.path, "rev-parse", "main") == commit == run.config_commit
    assert bumping.trailers(git(api_repo.path, "log", "-1", "--format=%B", commit)) == {
        "Quicflow-Deploy": ("app/dev",),
        "Quicflow-Trigger": ("webhook",),
        "Quicflow-Webhook": ("app.gh",),
        "Quicflow-Delivery": ("d-77",),
        "Quicflow-Actor": ("Ada <ada@example.com>",),
    }
    await engine.wait_idle()
    assert (await engine.reconcile_once(only="app/dev")).runs == []
    assert engine.deployed()[("app", "dev")].version == SHA


async def test_deploying_the_version_git_names_commits_nothing(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo, tokens: dict[str, str]
) -> None:
    before = git(api_repo.path, "rev-parse", "main")
    async with server.client(tokens["olga"]) as client:
        answer = await client.post(DEPLOY, json={"version": "1.0.0"})
    assert answer.status_code == 202, answer.text
    assert "bump_commit" not in answer.json()["detail"] and "pin" not in answer.json()["detail"]
    assert git(api_repo.path, "rev-parse", "main") == before


# -- where the reconciler may not push: pinned ---------------------------------------


@dataclass
class ReadOnly:
    """A reconciler whose config repo is a mirror of a remote that refuses its pushes."""

    engine: Reconciler
    served: Path  # the bare repository the daemon serves
    mirror: Path  # the reconciler's mirror of it
    work: Path  # an engineer's clone, to change Git the normal way


@pytest.fixture
async def read_only(
    api_repo: ConfigRepo, tmp_path: Path, age_identity: tuple[str, str]
) -> AsyncIterator[ReadOnly]:
    # Nothing may be pushed there, so history is not pushed either (claims stay local).
    settings = api_repo.read("quicflow.yaml").replace(
        "settings:\n", "settings:\n  push_history: false\n"
    )
    assert "push_history: false" in settings
    api_repo.commit({"quicflow.yaml": settings}, message="history stays here")
    served = bare_copy(api_repo.path, tmp_path / "served" / "config.git")
    with read_only_daemon(tmp_path / "served") as url:
        repo = GitRepository.open(f"{url}/config.git", cache_dir=tmp_path / "mirror")
        engine = Reconciler(repo, tmp_path / "ro-data", environ={"SOPS_AGE_KEY": age_identity[0]})
        git(tmp_path, "clone", "-q", str(served), "work")
        try:
            await engine.refresh()
            (mirror,) = (tmp_path / "mirror").glob("*.git")
            yield ReadOnly(engine, served, mirror, tmp_path / "work")
        finally:
            await engine.close()


def quicflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_where_the_push_is_refused_the_deploy_pins_visibly_until_git_changes(
    read_only: ReadOnly,
) -> None:
    engine = read_only.engine
    before = git(read_only.served, "rev-parse", "main")
    app = create_app(engine, await server_settings(engine))
    token = app.state.tokens.create("olga")
    async with serving(app) as server, server.client(token) as client:
        answer = await client.post(DEPLOY, json={"version": "1.1.0"})
        assert answer.status_code == 202, answer.text
        run = answer.json()
        assert run["detail"]["pin"] == "true" and run["detail"]["pin_desired_version"] == "1.0.0"
        assert "push of main" in run["detail"]["pin_reason"]
        assert "bump_commit" not in run["detail"]
        await engine.wait_idle()
        done = engine.runs.get(run["id"])
        assert done is not None and done.state is RunState.SUCCEEDED

        # Nothing reached Git: not the remote, not the mirror.
        assert git(read_only.served, "rev-parse", "main") == before
        assert git(read_only.mirror, "rev-parse", "main") == before

        # The plan holds it, pinned, and says so.
        action = dev_action(engine)
        assert (action.kind, action.reason) == (planning.ActionKind.HOLD, planning.Reason.PINNED)
        assert action.pin == planning.Pin("1.1.0", "1.0.0", action.config_hash)
        assert f"pinned to 1.1.0 by run {run['id']}" in action.detail
        assert (await engine.reconcile_once(only="app/dev")).runs == []  # the poll keeps it
        assert engine.deployed()[("app", "dev")].version == "1.1.0"

        project = (await client.get("/api/release/projects/app")).json()
        dev = next(e for e in project["environments"] if e["name"] == "dev")
        assert (dev["desired_version"], dev["deployed_version"], dev["drift"]) == (
            "1.0.0",
            "1.1.0",
            "pinned",
        )
        assert dev["pin"] == {"version": "1.1.0", "desired_version": "1.0.0", "run_id": run["id"]}
        page = (await client.get("/")).text
        assert 'class="badge s-pinned" title="1.1.0 ≠ Git 1.0.0"' in page
        run_page = (await client.get(f"/runs/{run['id']}")).text
        assert 'id="run-pin"' in run_page and "1.1.0 ≠ Git 1.0.0" in run_page
        assert "push of main" in run_page  # why it was not committed

    # The command line shows it too, from the mirror's state ref.
    plan = quicflow("plan", "--repo", str(read_only.mirror), "--head", "main", "--only", "app/dev")
    assert plan.returncode == 0, plan.stderr
    assert f"! app/dev: hold at 1.1.0 · pinned to 1.1.0 by run {run['id']}" in plan.stdout
    planned = json.loads(
        quicflow(
            "plan",
            "--repo",
            str(read_only.mirror),
            "--head",
            "main",
            "--only",
            "app/dev",
            "--format",
            "json",
        ).stdout
    )
    assert planned["actions"][0]["pin"]["version"] == "1.1.0"
    history = quicflow("history", "app", "dev", "--repo", str(read_only.mirror))
    assert "deployed 1.1.0, pinned while Git asks for 1.0.0" in history.stdout
    entries = json.loads(
        quicflow(
            "history", "app", "dev", "--repo", str(read_only.mirror), "--format", "json"
        ).stdout
    )["entries"]
    assert entries[0]["pin"]["desired_version"] == "1.0.0"

    # Git changes (an engineer pushes 1.2.0): the pin ends, Git's version is released.
    work = ConfigRepo(read_only.work)  # the existing clone
    work.commit({DEV: work.read(DEV).replace('"1.0.0"', '"1.2.0"')}, message="1.2.0")
    git(read_only.work, "push", "-q", "origin", "main")
    report = await engine.reconcile_once(only="app/dev")
    (released,) = report.runs
    assert (released.version, released.trigger, released.state) == (
        "1.2.0",
        Trigger.POLL,
        RunState.SUCCEEDED,
    )
    record = engine.deployed()[("app", "dev")]
    assert record.version == "1.2.0" and record.pin is None
