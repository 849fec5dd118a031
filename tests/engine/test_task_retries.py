"""A task's ``retries``: backoff between attempts, never shorter than a TemporaryError's delay.

End to end with a real config repo and a real reconciler; the waits go through the
reconciler's injected ``sleep`` (recorded, not slept), and the ``flaky`` task's first
attempt fails — by exiting 1, or by its executor raising ``TemporaryError(delay=42)``
as a busy target would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from gitrepos import ConfigRepo

from reconciler.drivers import StepFailed
from reconciler.engine import running
from reconciler.engine.reconciling import Reconciler
from reconciler.errors import TemporaryError
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState
from reconciler.targets.commands import CommandResult, OutputHandler, TargetRef
from reconciler.targets.local import LocalExecutor
from reconciler.targets.resolving import Executors

pytestmark = pytest.mark.integration

BUSY = 42.0


def project_yaml(flaky: str, retries: int) -> str:
    indented = "\n".join("            " + line for line in flaky.strip().splitlines())
    return f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  script:
    run: echo "$QUICFLOW_VERSION" > version
strategy:
  type: rolling
  rolling: {{batch_size: 1}}
pipeline:
  stages:
    - name: prepare
      tasks:
        - name: flaky
          retries: {retries}
          run: |
{indented}
    - name: release
      tasks:
        - {{name: deploy, uses: deploy}}
"""


FAILS_ONCE = "if [ -f tried ]; then exit 0; fi\ntouch tried\nexit 1"


class BusyOnce:
    """Runs commands locally, but the ``flaky`` task's first ``times`` runs raise TemporaryError."""

    def __init__(self, times: int = 1):
        self.local = LocalExecutor()
        self.left = times

    async def run(
        self,
        target: TargetRef,
        command_id: str,
        script: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_output: OutputHandler,
        cwd: str | None = None,
    ) -> CommandResult:
        # Command ids are ``lineage:step#attempt:target/key#n`` (RunContext.command_id).
        if command_id.rpartition("#")[0].endswith(":reconciler/flaky") and self.left:
            self.left -= 1
            raise TemporaryError("the target is busy", delay=BUSY)
        return await self.local.run(target, command_id, script, env, timeout, on_output, cwd)


async def release(
    tmp_path: Path, flaky: str, retries: int, executor: BusyOnce | None = None
) -> tuple[Run, list[float]]:
    """One pass over a fresh config repo; (the run, every wait the engine asked for)."""
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": "users:\n  - {username: bob, email: bob@example.com}\n",
            "projects/app/project.yaml": project_yaml(flaky, retries),
            "projects/app/environments/prod.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    rec = Reconciler(
        GitRepository.open(repo.path),
        tmp_path / "data",
        executors=Executors(local=executor) if executor is not None else None,
        sleep=sleep,
    )
    try:
        (run,) = (await rec.reconcile_once()).runs
    finally:
        await rec.close()
    return run, [w for w in waits if w]


async def test_a_temporary_error_is_retried_after_its_delay(tmp_path: Path) -> None:
    run, waits = await release(tmp_path, "true", retries=2, executor=BusyOnce())
    assert run.state is RunState.SUCCEEDED, run.error
    # The ordinary backoff after a first attempt is at most 1 s: the error's 42 s win.
    assert waits == [BUSY]


async def test_an_ordinary_failure_is_retried_after_the_backoff(tmp_path: Path) -> None:
    run, waits = await release(tmp_path, FAILS_ONCE, retries=2)
    assert run.state is RunState.SUCCEEDED, run.error
    low, high = running.TASK_BACKOFF / 2, running.TASK_BACKOFF
    assert len(waits) == 1 and low <= waits[0] <= high


async def test_a_temporary_error_past_the_last_attempt_fails_the_step_with_its_reason(
    tmp_path: Path,
) -> None:
    run, waits = await release(tmp_path, "true", retries=1, executor=BusyOnce(times=2))
    assert run.state is RunState.FAILED
    assert "task 'flaky': the target is busy" in run.error
    assert "internal error" not in run.error
    assert waits == [BUSY]


@pytest.mark.parametrize(
    ("failure", "attempt", "jitter", "expected"),
    [
        (StepFailed("t1", "exited 1"), 1, 0.0, 0.5),
        (StepFailed("t1", "exited 1"), 3, 1.0, 4.0),
        (StepFailed("t1", "exited 1"), 20, 1.0, running.TASK_MAX_BACKOFF),
        (TemporaryError("busy", delay=BUSY), 1, 0.5, BUSY),
        (TemporaryError("busy", delay=0.1), 3, 0.0, 2.0),  # the backoff is longer: it wins
    ],
)
def test_retry_wait_is_the_backoff_but_never_shorter_than_the_delay_asked_for(
    failure: Exception, attempt: int, jitter: float, expected: float
) -> None:
    assert running.retry_wait(attempt, failure, jitter) == expected


def test_a_failure_caused_by_a_temporary_error_waits_its_delay() -> None:
    try:
        try:
            raise TemporaryError("agent reconnecting", delay=BUSY)
        except TemporaryError as cause:
            raise StepFailed("t1", "agent reconnecting") from cause
    except StepFailed as failure:
        assert running.retry_wait(1, failure, 0.0) == BUSY
