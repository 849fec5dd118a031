"""The release engine against real local targets: HTTP servers on loopback, real health checks.

Each target is a directory whose deploy script starts ``appserver.py`` on the target's
port; a target listed in BAD_TARGETS becomes unhealthy (HTTP 500) for BAD_VERSION.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from releasing import (
    USERS,
    deploy_counts,
    env_yaml,
    free_ports,
    make_repo,
    project_yaml,
    stop_servers,
    versions,
)

from reconciler.engine.reconciling import Reconciler
from reconciler.errors import PermissionDenied
from reconciler.events import Event, EventType
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState, StepStatus

pytestmark = pytest.mark.integration

ROLLING = "  type: rolling\n  rolling: {batch_size: 1}\n"
CANARY = (
    "  type: canary\n  canary: {steps: [25, 50, 100], analysis: {window: 200ms, interval: 100ms}}\n"
)


class Clock:
    def __init__(self) -> None:
        self.at = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict]:
    data = tmp_path / "data"
    state: dict = {
        "data": data,
        "repo": ConfigRepo(tmp_path / "config"),
        "clock": Clock(),
        "events": [],
    }
    yield state
    stop_servers(data)


async def _reconciler(world: dict) -> Reconciler:
    rec = Reconciler(GitRepository.open(world["repo"].path), world["data"], now=world["clock"])

    async def collect(event: Event) -> None:
        world["events"].append(event)

    rec.bus.subscribe(collect)
    return rec


async def _pass(world: dict, only: str | None = None) -> list:
    rec = await _reconciler(world)
    try:
        report = await rec.reconcile_once(only=only)
        await rec.bus.drain()
        return report.runs
    finally:
        await rec.close()


async def _release(world: dict, strategy: str, n: int, bad: str, bad_version: str = "2.0") -> tuple:
    ports = free_ports(n)
    repo: ConfigRepo = world["repo"]
    make_repo(repo, USERS, project_yaml(strategy, bad, bad_version), env_yaml("1.0", ports))
    (first,) = await _pass(world)
    assert first.state is RunState.SUCCEEDED, first.error
    repo.commit({"projects/app/environments/prod.yaml": env_yaml("2.0", ports)})
    (second,) = await _pass(world)
    return first, second


def _types(world: dict) -> list[str]:
    return [e.type.value for e in world["events"]]


async def test_rolling_stops_at_the_failed_batch_and_rolls_back_touched_targets(
    world: dict,
) -> None:
    _, run = await _release(world, ROLLING, 4, bad="t3")
    assert run.state is RunState.ROLLED_BACK
    assert "t3" in run.error and "status 500" in run.error
    # t1, t2 got 2.0 then were restored; t3 failed and was restored; t4 was never touched.
    assert deploy_counts(world["data"], 4) == {
        "t1": ["1.0", "2.0", "1.0"],
        "t2": ["1.0", "2.0", "1.0"],
        "t3": ["1.0", "2.0", "1.0"],
        "t4": ["1.0"],
    }
    assert versions(world["data"], 4) == {f"t{i}": "1.0" for i in range(1, 5)}
    assert "rolled_back" in _types(world) and "deploy_failed" in _types(world)
    rec = await _reconciler(world)
    try:
        record = rec.deployed()[("app", "prod")]
        assert record.version == "1.0"
        assert record.last_failure is not None and record.last_failure.outcome == "rolled_back"
        # No crash loop: the same failed version is held, not retried.
        await rec.refresh()
        assert [a.reason.value for a in rec.plan().actions] == ["failed_before"]
        assert (await rec.reconcile_once()).runs == []
    finally:
        await rec.close()


async def test_canary_stops_at_its_step_and_emits_canary_failed(world: dict) -> None:
    _, run = await _release(world, CANARY, 4, bad="t2")
    assert run.state is RunState.ROLLED_BACK
    steps = [e.data.get("step") for e in world["events"] if e.type is EventType.CANARY_STEP]
    assert steps == [1, 2, 3, 1]  # the first release's three steps, then step 1 of the second
    assert "canary_failed" in _types(world)
    counts = deploy_counts(world["data"], 4)
    assert counts["t3"] == ["1.0"] and counts["t4"] == ["1.0"]  # never reached
    assert counts["t1"] == ["1.0", "2.0", "1.0"] and counts["t2"] == ["1.0", "2.0", "1.0"]


async def test_rolling_without_auto_rollback_fails_and_leaves_targets(world: dict) -> None:
    strategy = "  type: rolling\n  auto_rollback: false\n  rolling: {batch_size: 2}\n"
    _, run = await _release(world, strategy, 4, bad="t1")
    assert run.state is RunState.FAILED and "auto_rollback is off" in run.error
    assert versions(world["data"], 4) == {"t1": "2.0", "t2": "2.0", "t3": "1.0", "t4": "1.0"}


async def test_blue_green_never_switches_to_an_unhealthy_color(world: dict, tmp_path: Path) -> None:
    blue, green = free_ports(2)
    strategy = (
        f'  type: blue_green\n  blue_green:\n    switch: echo "$QUICFLOW_COLOR" > "$QUICFLOW_WORK_DIR/live"\n'
        f"    ports: {{blue: {blue}, green: {green}}}\n    rollback_window: 0s\n"
    )
    repo: ConfigRepo = world["repo"]
    make_repo(repo, USERS, project_yaml(strategy, "t1", "2.0"), env_yaml("1.0", [blue]))
    (first,) = await _pass(world)
    live = world["data"] / "targets" / "app" / "prod" / "t1" / "live"
    assert first.state is RunState.SUCCEEDED and live.read_text().strip() == "blue"
    repo.commit({"projects/app/environments/prod.yaml": env_yaml("1.5", [blue])})
    (second,) = await _pass(world)
    assert second.state is RunState.SUCCEEDED and live.read_text().strip() == "green"
    assert second.detail["retire_color"] == "blue"
    # The rollback window (0s here) is over: the next pass retires blue through the driver.
    await _pass(world)
    work = world["data"] / "targets" / "app" / "prod" / "t1"
    assert (work / "retired-blue").exists() and not (work / "retired-green").exists()
    repo.commit({"projects/app/environments/prod.yaml": env_yaml("2.0", [blue])})
    (third,) = await _pass(world)
    assert third.state is RunState.FAILED and "never switched" in third.error
    assert live.read_text().strip() == "green"  # traffic stayed on the healthy color


async def test_approval_waits_refuses_weaker_roles_and_continues(world: dict) -> None:
    pipeline = (
        "pipeline:\n  stages:\n    - name: release\n      approval: {roles: [owner, maintainer]}\n"
        "      tasks:\n        - {name: deploy, uses: deploy}\n"
    )
    ports = free_ports(1)
    make_repo(
        world["repo"], USERS, project_yaml(ROLLING, pipeline=pipeline), env_yaml("1.0", ports)
    )
    (run,) = await _pass(world)
    assert run.state is RunState.WAITING_APPROVAL and run.detail["gate"] == "approval:release"
    assert "approval_requested" in _types(world)

    rec = await _reconciler(world)
    try:
        await rec.refresh()
        users = rec.desired.users  # type: ignore[union-attr]
        for weaker in ("carol", "dave"):
            with pytest.raises(PermissionDenied):
                await rec.approve(run.id, users[weaker])
        approved = await rec.approve(run.id, users["bob"])
        await rec.wait_idle()
        final = rec.runs.get(approved.id)
        assert final is not None and final.state is RunState.SUCCEEDED
        assert rec.runs.decision(run.id, "approval:release").user == "bob"  # type: ignore[union-attr]
    finally:
        await rec.close()
    assert versions(world["data"], 1) == {"t1": "1.0"}


async def test_rejection_fails_the_run(world: dict) -> None:
    pipeline = (
        "pipeline:\n  stages:\n    - name: release\n      approval: {roles: [owner]}\n"
        "      tasks:\n        - {name: deploy, uses: deploy}\n"
    )
    make_repo(
        world["repo"],
        USERS,
        project_yaml(ROLLING, pipeline=pipeline),
        env_yaml("1.0", free_ports(1)),
    )
    (run,) = await _pass(world)
    rec = await _reconciler(world)
    try:
        await rec.refresh()
        await rec.reject(run.id, rec.desired.users["bob"], "not today")  # type: ignore[union-attr]
        await rec.wait_idle()
        final = rec.runs.get(run.id)
        assert (
            final is not None
            and final.state is RunState.FAILED
            and "rejected by bob" in final.error
        )
    finally:
        await rec.close()
    assert deploy_counts(world["data"], 1) == {"t1": []}


async def test_approval_times_out(world: dict) -> None:
    pipeline = (
        "pipeline:\n  stages:\n    - name: release\n      approval: {roles: [owner], timeout: 1h}\n"
        "      tasks:\n        - {name: deploy, uses: deploy}\n"
    )
    make_repo(
        world["repo"],
        USERS,
        project_yaml(ROLLING, pipeline=pipeline),
        env_yaml("1.0", free_ports(1)),
    )
    (run,) = await _pass(world)
    assert run.state is RunState.WAITING_APPROVAL
    world["clock"].at += dt.timedelta(minutes=30)
    (still,) = await _pass(world)
    assert still.state is RunState.WAITING_APPROVAL
    world["clock"].at += dt.timedelta(minutes=31)
    (late,) = await _pass(world)
    assert late.state is RunState.FAILED and "timed out" in late.error


async def test_conditions_skip_and_run_tasks(world: dict) -> None:
    pipeline = """pipeline:
  stages:
    - name: checks
      tasks:
        - {name: always, run: "echo always > ran-always"}
        - {name: only-dev, run: "echo x > ran-dev", when: "env == 'dev'"}
        - {name: only-prod-v1, run: "echo x > ran-prod", when: "env == 'prod' and version == '1.0'"}
        - {name: var-check, run: "echo x > ran-var", when: "vars.BAD_TARGETS == 'none-here'"}
    - name: release
      tasks:
        - {name: deploy, uses: deploy}
"""
    make_repo(
        world["repo"],
        USERS,
        project_yaml(ROLLING, bad_targets="none-here", pipeline=pipeline),
        env_yaml("1.0", free_ports(1)),
    )
    (run,) = await _pass(world)
    assert run.state is RunState.SUCCEEDED, run.error
    rec = await _reconciler(world)
    try:
        steps = {s.key: s.status for s in rec.runs.steps(run.id)}
    finally:
        await rec.close()
    assert steps["task:checks/always"] is StepStatus.SUCCEEDED
    assert steps["task:checks/only-dev"] is StepStatus.SKIPPED
    assert steps["task:checks/only-prod-v1"] is StepStatus.SUCCEEDED
    assert steps["task:checks/var-check"] is StepStatus.SUCCEEDED
    work = world["data"] / "work" / "app" / "prod"
    assert sorted(p.name for p in work.glob("ran-*")) == ["ran-always", "ran-prod", "ran-var"]
