"""Health checks after a deploy, with ``start_period`` read as Docker's HEALTHCHECK reads it.

The targets are real: a deploy script on a local target starts a background process
that makes the app "ready" after a delay, and the health check is a real command
(``test -f ready``) run in the target's work dir. During ``start_period`` failed
checks do not count; once a check passes the start period is over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from gitrepos import ConfigRepo

from reconciler.drivers import script
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import building, model
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState
from reconciler.targets.commands import CommandResult, TargetRef
from reconciler.targets.local import LocalExecutor

pytestmark = pytest.mark.integration

# Ready after READY_AFTER seconds; the background process must not hold the output pipes.
DEPLOY = 'rm -f ready; (sleep "$READY_AFTER"; touch ready) >/dev/null 2>&1 </dev/null &'


class Context:
    """The part of a run a driver uses, over the real local executor."""

    def __init__(self, variables: Mapping[str, str]):
        self.env = building.environment(
            "app",
            "prod",
            {"members": [], "deploy": {"type": "script", "script": {"run": "true"}}},
            {"version": "1.0"},
            model.Source("x"),
        )
        self.version = "1.0"
        self.previous_version = None
        self.extra = dict(variables)
        self.executor = LocalExecutor()
        self.commands: list[str] = []

    def variables(
        self, target: TargetRef | None, version: str, color: str | None = None
    ) -> dict[str, str]:
        return {**self.extra, "QUICFLOW_VERSION": version}

    async def execute(
        self,
        target: TargetRef,
        script_text: str,
        *,
        key: str,
        env: Mapping[str, str],
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        self.commands.append(key)
        return await self.executor.run(
            target, key, script_text, env, timeout, lambda c, t: None, cwd
        )

    def log(self, source: str, text: str) -> None:
        pass


def driver(health: Mapping[str, Any]) -> script.ScriptDriver:
    deploy = building.deploy({"type": "script", "script": {"run": DEPLOY}, "health": health})
    return script.ScriptDriver(deploy, model.Strategy())


@pytest.fixture
def target(tmp_path: Path) -> TargetRef:
    return TargetRef("t1", "local", work_dir=str(tmp_path / "t1"))


CHECK = {"command": ["test", "-f", "ready"], "retries": 2, "interval": "100ms"}


async def test_failures_in_the_start_period_do_not_count(target: TargetRef) -> None:
    ctx = Context({"READY_AFTER": "1"})
    d = driver({**CHECK, "start_period": "10s"})
    await d.deploy(ctx, target, "1.0", None)
    started = time.monotonic()
    health = await d.verify(ctx, target, None)
    elapsed = time.monotonic() - started
    assert health.ok, health.detail
    # Many more checks than ``retries`` ran, and the first pass ended the wait early.
    assert ctx.commands.count("health") > CHECK["retries"]
    assert 0.9 < elapsed < 8


async def test_without_a_start_period_the_same_app_is_unhealthy(target: TargetRef) -> None:
    ctx = Context({"READY_AFTER": "1"})
    d = driver(CHECK)
    await d.deploy(ctx, target, "1.0", None)
    health = await d.verify(ctx, target, None)
    assert not health.ok
    assert ctx.commands.count("health") == CHECK["retries"]
    assert health.detail == "health command exited 1 (after 2 attempts)"


async def test_an_app_that_never_starts_fails_after_the_start_period_and_its_retries(
    target: TargetRef,
) -> None:
    ctx = Context({"READY_AFTER": "60"})
    d = driver({**CHECK, "start_period": "1s"})
    await d.deploy(ctx, target, "1.0", None)
    started = time.monotonic()
    health = await d.verify(ctx, target, None)
    elapsed = time.monotonic() - started
    assert not health.ok
    assert "1s start period" in health.detail
    assert elapsed >= 1.0
    # After the start period, exactly ``retries`` failures counted.
    assert elapsed < 5


async def test_the_start_period_ends_with_the_first_passing_check(target: TargetRef) -> None:
    ctx = Context({"READY_AFTER": "0"})
    d = driver({**CHECK, "start_period": "30s"})
    await d.deploy(ctx, target, "1.0", None)
    assert (await d.verify(ctx, target, None)).ok
    # The app breaks later (a canary analysis check): no second start period.
    Path(target.work_dir, "ready").unlink()
    before = ctx.commands.count("health")
    started = time.monotonic()
    health = await d.verify(ctx, target, None)
    assert not health.ok
    assert ctx.commands.count("health") - before == CHECK["retries"]
    assert time.monotonic() - started < 5
    assert "start period" not in health.detail


async def test_a_new_deploy_starts_a_new_start_period(target: TargetRef) -> None:
    ctx = Context({"READY_AFTER": "0"})
    d = driver({**CHECK, "start_period": "30s"})
    await d.deploy(ctx, target, "1.0", None)
    assert (await d.verify(ctx, target, None)).ok
    ctx.extra["READY_AFTER"] = "1"
    await d.deploy(ctx, target, "2.0", None)
    health = await d.verify(ctx, target, None)
    assert health.ok, health.detail


# -- end to end -----------------------------------------------------------------------


def project_yaml(start_period: str) -> str:
    period = f"    start_period: {start_period}\n" if start_period else ""
    return f"""\
members:
  - {{user: bob, role: owner}}
variables:
  READY_AFTER: "1"
deploy:
  type: script
  script:
    run: '{DEPLOY}'
  health:
    command: [test, -f, ready]
    retries: 2
    interval: 100ms
{period}strategy:
  type: rolling
"""


@pytest.mark.parametrize(("start_period", "state"), [("20s", "succeeded"), ("", "failed")])
async def test_a_release_waits_out_the_start_period(
    tmp_path: Path, start_period: str, state: str
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": "users:\n  - {username: bob, email: bob@example.com}\n",
            "projects/app/project.yaml": project_yaml(start_period),
            "projects/app/environments/prod.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        (run,) = (await rec.reconcile_once()).runs
    finally:
        await rec.close()
    assert run.state is RunState(state), run.error
    if state == "failed":
        assert "unhealthy: health command exited 1 (after 2 attempts)" in run.error
