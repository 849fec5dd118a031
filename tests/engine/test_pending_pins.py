"""A pending pin is never silently dropped: a pinned run the reconciler died during is
carried on by the next pass, although the plan itself holds (Git did not change).

A real ``quicflow rollback --pin`` subprocess rolls 1.0 back over two local targets,
one at a time, and is SIGKILLed once the first target is done. Git still names 2.0 and
the state ref still says 2.0, so the planner sees nothing to do; the interrupted run's
request — deploy 1.0 and pin it while Git asks for 2.0 — must still be finished, as the
same trigger, without deploying the finished target again. Then the pin holds as any.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState, Trigger
from reconciler.store.database import FILE_NAME

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: |
      set -eu
      echo "$QUICFLOW_VERSION" >> deploys.log
      echo "$QUICFLOW_VERSION" > version
      sleep "$DEPLOY_DELAY"
strategy:
  type: rolling
  rolling: {batch_size: 1}
"""


def env_yaml(version: str) -> str:
    return (
        f'version: "{version}"\ntargets:\n  - {{local: t1}}\n  - {{local: t2}}\n'
        'variables:\n  DEPLOY_DELAY: "0.5"\n'
    )


def quicflow(*args: str, data: Path, repo: Path) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args, "--repo", str(repo), "--data", str(data)]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def rollback_steps_done(data: Path) -> list[str]:
    """The deploy steps of rollback runs that succeeded, read from the real SQLite file."""
    try:
        conn = sqlite3.connect(data / FILE_NAME, timeout=10)
    except sqlite3.Error:
        return []
    try:
        rows = conn.execute(
            "SELECT s.key FROM steps s JOIN runs r ON s.run_id = r.id WHERE r.trigger = "
            "'rollback' AND s.key LIKE 'deploy:%' AND s.status = 'succeeded'"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [key for (key,) in rows]


def logs(data: Path) -> dict[str, list[str]]:
    out = {}
    for name in ("t1", "t2"):
        log = data / "targets" / "app" / "prod" / name / "deploys.log"
        out[name] = log.read_text().split() if log.exists() else []
    return out


def version_on(data: Path, target: str) -> str:
    return (data / "targets" / "app" / "prod" / target / "version").read_text().strip()


async def test_a_pinned_run_killed_halfway_is_carried_on_not_dropped(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    data = tmp_path / "data"
    repo.commit(
        {"quicflow.yaml": USERS, "projects/app/project.yaml": PROJECT, ENV_FILE: env_yaml("1.0")}
    )
    for version in ("1.0", "2.0"):
        if version != "1.0":
            repo.commit({ENV_FILE: env_yaml(version)}, message=f"release {version}")
        done = subprocess.run(
            quicflow("apply", data=data, repo=repo.path),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert logs(data) == {"t1": ["1.0", "2.0"], "t2": ["1.0", "2.0"]}

    made = subprocess.run(
        quicflow("token", "create", "bob", data=data, repo=repo.path),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = tmp_path / "bob.token"
    token.write_text(made.stdout)
    pinning = subprocess.Popen(
        quicflow(
            "rollback",
            "app",
            "prod",
            "--pin",
            "--as",
            "bob",
            "--token-file",
            str(token),
            data=data,
            repo=repo.path,
        ),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while rollback_steps_done(data) != ["deploy:t1"]:
        assert pinning.poll() is None, pinning.communicate()[0]
        assert time.monotonic() < deadline, "the pinned rollback never finished t1"
        time.sleep(0.01)
    pinning.kill()  # SIGKILL: nothing is flushed, the run is left running in the store
    pinning.communicate()
    assert version_on(data, "t1") == "1.0"

    rec = Reconciler(GitRepository.open(repo.path), data)
    try:
        await rec.refresh()
        (action,) = rec.plan().actions
        assert action.kind.value == "none"  # Git and the state ref still both say 2.0
        report = await rec.reconcile_once()
        (run,) = report.runs
        assert (run.state, run.version, run.trigger) == (
            RunState.SUCCEEDED,
            "1.0",
            Trigger.ROLLBACK,
        )
        assert run.resumes and run.actor == "bob"
        interrupted = rec.runs.get(run.resumes)
        assert interrupted is not None and interrupted.state is RunState.INTERRUPTED
        record = rec.deployed()[("app", "prod")]
        assert record.version == "1.0" and record.pin is not None
        assert record.pin.desired_version == "2.0"
        assert rec.plan().actions[0].reason.value == "pinned"
        assert (await rec.reconcile_once()).runs == []  # now it simply holds
    finally:
        await rec.close()
    assert logs(data)["t1"] == ["1.0", "2.0", "1.0"]  # its finished step was not repeated
    assert (version_on(data, "t1"), version_on(data, "t2")) == ("1.0", "1.0")
