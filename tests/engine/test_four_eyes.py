"""The four-eyes rule (``approval: {four_eyes: true}`` in an environment file).

A real config repo, committed by different authors, and the real engine over a local
script target. With the rule on, the author of the config commit a run applies (matched
to a user by email) and the person who started the run may not approve its gate — not
even an admin — while another member may; rejecting stays open to them. Without the
rule the author approves as before.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.errors import PermissionDenied
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState, Trigger

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
OTHER_FILE = "projects/other/environments/prod.yaml"
BOB = ("Bob Owner", "bob@example.com")
CAROL = ("Carol Maintainer", "carol@example.com")

PROJECT = """\
members:
  - {user: bob, role: owner}
  - {user: carol, role: maintainer}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" > version
pipeline:
  stages:
    - name: release
      approval: {roles: [owner, maintainer]}
      tasks:
        - {name: deploy, uses: deploy}
"""
OTHER = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  script:
    run: "true"
"""


def env_yaml(version: str, four_eyes: bool = True) -> str:
    rule = "approval: {four_eyes: true}\n" if four_eyes else ""
    return f'version: "{version}"\n{rule}targets:\n  - {{local: t1}}\n'


class World:
    def __init__(self, tmp_path: Path, four_eyes: bool = True):
        self.repo = ConfigRepo(tmp_path / "config")
        self.four_eyes = four_eyes
        self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/app/project.yaml": PROJECT,
                ENV_FILE: env_yaml("1.0", four_eyes),
            }
        )
        self.engine = Reconciler(
            GitRepository.open(self.repo.path),
            tmp_path / "data",
            now=lambda: dt.datetime.now(dt.UTC),
        )

    def user(self, name: str):  # noqa: ANN201 - model.User
        desired = self.engine.desired
        assert desired is not None
        return desired.users[name]

    async def reconcile(self) -> list[Run]:
        report = await self.engine.reconcile_once()
        await self.engine.wait_idle()
        return report.runs

    def run(self, run_id: str) -> Run:
        found = self.engine.runs.get(run_id)
        assert found is not None
        return found

    async def release(self, version: str, author: tuple[str, str]) -> Run:
        self.repo.commit(
            {ENV_FILE: env_yaml(version, self.four_eyes)}, f"release {version}", author
        )
        (run,) = await self.reconcile()
        assert run.state is RunState.WAITING_APPROVAL, run
        return run


@pytest.fixture
async def world(tmp_path: Path):
    world = World(tmp_path)
    try:
        (first,) = await world.reconcile()  # committed by alice: bob may approve it
        await world.engine.approve(first.id, world.user("bob"))
        await world.engine.wait_idle()
        assert world.run(first.id).state is RunState.SUCCEEDED
        yield world
    finally:
        await world.engine.close()


async def test_the_author_of_the_change_may_not_approve_it(world: World) -> None:
    run = await world.release("2.0", BOB)
    with pytest.raises(
        PermissionDenied, match=r"four-eyes rule on app/prod: bob wrote this change"
    ):
        await world.engine.approve(run.id, world.user("bob"))
    assert world.run(run.id).state is RunState.WAITING_APPROVAL
    assert world.engine.runs.decisions(run.id) == []

    await world.engine.approve(run.id, world.user("carol"), "looks good")
    await world.engine.wait_idle()
    assert world.run(run.id).state is RunState.SUCCEEDED
    (decision,) = world.engine.runs.decisions(run.id)
    assert (decision.user, decision.approved) == ("carol", True)


async def test_every_author_since_the_deployed_commit_counts_and_admins_too(
    world: World,
) -> None:
    """Two commits make the change (carol edits, alice releases): neither may approve;
    a commit to another project in between names no author of this one."""
    world.repo.commit({ENV_FILE: env_yaml("1.1")}, "prepare", CAROL)
    world.repo.commit(
        {
            "projects/other/project.yaml": OTHER,
            OTHER_FILE: 'version: "1"\ntargets: [{local: o1}]\n',
        },
        "other",
        BOB,
    )
    world.repo.commit({ENV_FILE: env_yaml("2.0")}, "release 2.0")  # alice, an admin
    await world.engine.refresh()
    (waiting,) = [r for r in await world.reconcile() if r.project == "app"]
    assert waiting.state is RunState.WAITING_APPROVAL
    assert set(world.engine.change_authors(waiting.id)) == {"alice", "carol"}
    for name in ("alice", "carol"):
        with pytest.raises(PermissionDenied, match=f"{name} wrote this change"):
            await world.engine.approve(waiting.id, world.user(name))
    await world.engine.approve(waiting.id, world.user("bob"))
    await world.engine.wait_idle()
    assert world.run(waiting.id).state is RunState.SUCCEEDED


async def test_the_person_who_started_the_run_may_not_approve_it(world: World) -> None:
    world.repo.commit({ENV_FILE: env_yaml("2.0")}, "release 2.0")  # by alice
    await world.engine.refresh()
    run = await world.engine.deploy(
        "app", "prod", None, actor=world.user("carol"), trigger=Trigger.MANUAL
    )
    await world.engine.wait_idle()
    run = world.run(run.id)
    assert (run.state, run.actor) == (RunState.WAITING_APPROVAL, "carol")
    with pytest.raises(PermissionDenied, match="carol started this run"):
        await world.engine.approve(run.id, world.user("carol"))
    # The author may reject their own change: the rule guards approvals only.
    await world.engine.reject(run.id, world.user("alice"), "not today")
    await world.engine.wait_idle()
    assert world.run(run.id).state is RunState.FAILED


async def test_without_the_rule_the_author_approves(tmp_path: Path) -> None:
    world = World(tmp_path, four_eyes=False)
    try:
        (first,) = await world.reconcile()
        await world.engine.approve(first.id, world.user("bob"))
        await world.engine.wait_idle()
        run = await world.release("2.0", BOB)
        await world.engine.approve(run.id, world.user("bob"))
        await world.engine.wait_idle()
        assert world.run(run.id).state is RunState.SUCCEEDED
    finally:
        await world.engine.close()
