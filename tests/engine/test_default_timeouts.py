"""Every step has a timeout: a task or deploy that names none gets ``settings.timeouts``.

End to end with a real config repo, a real reconciler and real scripts on a local
target that sleep far longer than the (small, configured) default: the run fails as
timed out instead of hanging. The defaults themselves are read where the config is built.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.events import Event, EventType
from reconciler.gitops import building, model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState

USERS = "users:\n  - {username: bob, email: bob@example.com}\n"
SLEEPS = "sleep 60"  # far beyond the configured default of 1s

# A hung deploy script; the run must fail on the 1s default, long before the sleep ends.
HUNG_DEPLOY = f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  script:
    run: {SLEEPS}
"""

HUNG_TASK = f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  script:
    run: echo "$QUICFLOW_VERSION" > version
pipeline:
  stages:
    - name: prepare
      tasks:
        - name: migrate
          run: {SLEEPS}
    - name: release
      tasks:
        - {{name: deploy, uses: deploy}}
"""

ENV = 'version: "1.0"\ntargets:\n  - {local: t1}\n'


def commit(repo: ConfigRepo, project: str, settings: str = "") -> None:
    repo.commit(
        {
            "quicflow.yaml": settings + USERS,
            "projects/app/project.yaml": project,
            "projects/app/environments/prod.yaml": ENV,
        }
    )


async def release(repo: ConfigRepo, data: Path) -> tuple[Run, list[Event], float]:
    rec = Reconciler(GitRepository.open(repo.path), data)
    events: list[Event] = []

    async def collect(event: Event) -> None:
        events.append(event)

    rec.bus.subscribe(collect)
    started = time.monotonic()
    try:
        (run,) = (await rec.reconcile_once()).runs
        await rec.bus.drain()
    finally:
        await rec.close()
    return run, events, time.monotonic() - started


SHORT = "settings:\n  timeouts: {task: 1s, deploy: 1s}\n"


@pytest.mark.integration
async def test_a_deploy_script_without_a_timeout_is_stopped_by_the_default(
    tmp_path: Path,
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    commit(repo, HUNG_DEPLOY, SHORT)
    run, events, elapsed = await release(repo, tmp_path / "data")
    assert run.state is RunState.FAILED
    assert "deploy script timed out after 1." in run.error
    assert EventType.DEPLOY_TIMEOUT in {e.type for e in events}
    assert elapsed < 30


@pytest.mark.integration
async def test_a_task_without_a_timeout_is_stopped_by_the_default(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    commit(repo, HUNG_TASK, SHORT)
    run, events, elapsed = await release(repo, tmp_path / "data")
    assert run.state is RunState.FAILED
    assert "task 'migrate' timed out" in run.error
    assert EventType.TASK_TIMED_OUT in {e.type for e in events}
    # The deploy stage never started: nothing reached the target.
    assert not (tmp_path / "data" / "targets" / "app" / "prod" / "t1" / "version").exists()
    assert elapsed < 30


@pytest.mark.integration
async def test_a_timeout_in_the_config_wins_over_the_default(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    # The default would cut the 2s task; its own 20s lets it finish.
    project = HUNG_TASK.replace(f"run: {SLEEPS}", "run: sleep 2\n          timeout: 20s")
    commit(repo, project, SHORT)
    run, _, _ = await release(repo, tmp_path / "data")
    assert run.state is RunState.SUCCEEDED, run.error


# -- where the defaults come from --------------------------------------------------------


def _load(repo: ConfigRepo) -> model.Environment:
    desired = Loader(GitRepository.open(repo.path)).load().raise_for_problems()
    env = desired.environment("app", "prod")
    assert env is not None
    return env


def test_without_settings_every_step_gets_the_documented_default(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    commit(repo, HUNG_TASK)
    env = _load(repo)
    assert env.deploy.timeout == model.DEFAULT_DEPLOY_TIMEOUT == 30 * 60
    assert env.build.timeout == model.DEFAULT_BUILD_TIMEOUT == 60 * 60
    tasks = {t.name: t for s in env.pipeline.stages for t in s.tasks}
    assert tasks["migrate"].timeout == model.DEFAULT_TASK_TIMEOUT == 30 * 60


def test_settings_timeouts_reach_every_task_and_deploy(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    project = HUNG_TASK.replace(
        "        - {name: deploy, uses: deploy}\n",
        "        - name: deploy\n          uses: deploy\n          deploy: {script: {run: 'true'}}\n",
    )
    commit(repo, project, "settings:\n  timeouts: {task: 90s, deploy: 5m, build: 2h}\n")
    env = _load(repo)
    assert env.deploy.timeout == 300
    assert env.build.timeout == 7200
    tasks = {t.name: t for s in env.pipeline.stages for t in s.tasks}
    assert tasks["migrate"].timeout == 90
    # A task's own deploy block is a deploy too.
    assert tasks["deploy"].deploy is not None and tasks["deploy"].deploy.timeout == 300


def test_explicit_timeouts_are_kept() -> None:
    timeouts = model.StepTimeouts(task=1, deploy=2, build=3)
    assert building.deploy({"type": "script", "timeout": "45s"}, timeouts.deploy).timeout == 45
    assert building.deploy({"type": "script"}, timeouts.deploy).timeout == 2
    assert building.build_config({"timeout": "10m"}, timeouts.build).timeout == 600
    assert building.step_timeouts({"timeouts": {"task": "2m"}}) == model.StepTimeouts(task=120)
    assert building.settings({"timeouts": {"deploy": "1h"}}).timeouts.deploy == 3600
