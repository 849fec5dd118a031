"""Rollback on purpose, release windows and secret masking, end to end with real Git.

- Rollback by revert: ``quicflow rollback`` (a real CLI subprocess) commits the old
  version back into the config repo — Git stays the truth — and the next pass deploys
  it with trigger ``rollback``; a viewer is refused and nothing is committed.
- Rollback ``--pin``: the old version is deployed at once, the environment holds
  (reason ``pinned``) while Git still names the newer version, and a change to the
  environment in Git ends the pin.
- Release windows: a run due outside its window waits (``waiting_window`` with the next
  opening) and starts when the injected clock enters the window; a manual deploy outside
  it is refused to a maintainer, allowed to an owner who forces it, and the force is
  written into the history in Git.
- Masking: a real SOPS credentials file, encrypted in the test for an age key made in
  the test, feeds a deploy script that prints the secret plainly, in base64 (aligned
  and shifted) and split over two writes; the secret reaches no stored log line, no
  note, no state commit and no run error.

Targets are local directories; each deploy appends its version to ``deploys.log``.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS

from reconciler.credential import age, documents, sops
from reconciler.engine.reconciling import Reconciler
from reconciler.errors import PermanentError, PermissionDenied
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState, Trigger

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
DEPLOY = """\
      set -eu
      echo "$QUICFLOW_VERSION" >> deploys.log
      echo "$QUICFLOW_VERSION" > version
      echo "deployed $QUICFLOW_VERSION on $QUICFLOW_TARGET ($QUICFLOW_TRIGGER)"
"""


def project_yaml(script: str = DEPLOY, variables: str = "") -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
  - {{user: carol, role: maintainer}}
  - {{user: dave, role: viewer}}
{variables}deploy:
  type: script
  timeout: 20s
  script:
    run: |
{script}strategy:
  type: rolling
  rolling: {{batch_size: 1}}
"""


def env_yaml(version: str, extra: str = "") -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n  - {{local: t2}}\n{extra}'


# Monday to Friday, 09:00–17:00 in Berlin (UTC+1 in November).
WINDOW = (
    "release_windows:\n"
    "  - {timezone: Europe/Berlin, days: [mon, tue, wed, thu, fri], start: '09:00', end: '17:00'}\n"
)


class Clock:
    """The reconciler's clock, moved by the test."""

    def __init__(self, at: dt.datetime):
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


class World:
    """A config repo, a data dir, and a way to run reconciler passes over them."""

    def __init__(self, tmp_path: Path):
        self.repo = ConfigRepo(tmp_path / "config")
        self.data = tmp_path / "data"
        self.tmp = tmp_path
        self.clock = Clock(dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC))  # a Wednesday
        self.environ: dict[str, str] = {}

    def reconciler(self) -> Reconciler:
        return Reconciler(
            GitRepository.open(self.repo.path), self.data, now=self.clock, environ=self.environ
        )

    async def reconcile(self) -> list[Run]:
        rec = self.reconciler()
        try:
            return (await rec.reconcile_once()).runs
        finally:
            await rec.close()

    def start(self, version: str, project: str | None = None, env_extra: str = "") -> str:
        return self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/app/project.yaml": project or project_yaml(),
                ENV_FILE: env_yaml(version, env_extra),
            }
        )

    def deploys(self) -> dict[str, list[str]]:
        out = {}
        for name in ("t1", "t2"):
            log = self.data / "targets" / "app" / "prod" / name / "deploys.log"
            out[name] = log.read_text().split() if log.exists() else []
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args]
            + ["--repo", str(self.repo.path), "--data", str(self.data)],
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token_file(self, user: str) -> str:
        """A file holding a fresh API token of ``user``, made with ``quicflow token create``."""
        made = self.cli("token", "create", user)
        assert made.returncode == 0, made.stderr
        path = self.tmp / f"{user}.token"
        path.write_text(made.stdout)
        return str(path)

    def state_log(self, fmt: str = "%s") -> list[str]:
        return git(self.repo.path, "log", f"--format={fmt}", "refs/quicflow/state").splitlines()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    yield World(tmp_path)


async def deployed_one_then_two(world: World) -> None:
    world.start("1.0")
    (first,) = await world.reconcile()
    world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
    (second,) = await world.reconcile()
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED)
    assert world.deploys() == {"t1": ["1.0", "2.0"], "t2": ["1.0", "2.0"]}


# -- rollback ---------------------------------------------------------------------------


async def test_rollback_commits_a_revert_that_the_next_pass_deploys(world: World) -> None:
    await deployed_one_then_two(world)
    before = git(world.repo.path, "rev-parse", "main")

    refused = world.cli("rollback", "app", "prod", "--token-file", world.token_file("dave"))
    assert refused.returncode == 1
    assert "dave (viewer) may not rollback" in refused.stderr
    assert git(world.repo.path, "rev-parse", "main") == before  # nothing committed

    # A staging release merged just before the rollback goes out in the same pass: it must
    # not be mistaken for a rollback (its 'trigger' decides e.g. whether migrations run).
    staging = world.repo.commit(
        {"projects/app/environments/staging.yaml": env_yaml("2.1")}, message="staging 2.1"
    )
    done = world.cli("rollback", "app", "prod", "--token-file", world.token_file("bob"))
    assert done.returncode == 0, done.stderr
    assert "committed" in done.stdout
    revert = git(world.repo.path, "rev-parse", "main")
    assert git(world.repo.path, "rev-parse", f"{revert}~1") == staging
    author = git(world.repo.path, "log", "-1", "--format=%an <%ae>", revert)
    assert author == "quicflow <quicflow@localhost>"
    trailer = git(
        world.repo.path, "log", "-1", "--format=%(trailers:key=Quicflow-Rollback,valueonly)", revert
    )
    assert trailer.strip() == "app/prod"
    assert "Requested by bob" in git(world.repo.path, "log", "-1", "--format=%B", revert)
    changed = git(world.repo.path, "show", f"{revert}:{ENV_FILE}")
    assert changed == env_yaml("1.0").strip()

    runs = {r.env: r for r in await world.reconcile()}
    run = runs["prod"]
    assert run.state is RunState.SUCCEEDED, run.error
    assert (run.version, run.previous_version, run.trigger) == ("1.0", "2.0", Trigger.ROLLBACK)
    assert (runs["staging"].state, runs["staging"].trigger) == (RunState.SUCCEEDED, Trigger.POLL)
    assert run.config_commit == revert
    assert world.deploys() == {"t1": ["1.0", "2.0", "1.0"], "t2": ["1.0", "2.0", "1.0"]}
    assert "app/prod: 2.0 -> 1.0 succeeded" in world.state_log()[:2]
    assert "Trigger: rollback" in world.state_log("%B")
    note = git(world.repo.path, "notes", "--ref=quicflow", "show", revert)
    assert "app/prod 2.0 -> 1.0 succeeded" in note and "trigger rollback" in note
    assert await world.reconcile() == []  # settled


async def test_rollback_commit_keeps_the_checked_out_work_tree_in_step(world: World) -> None:
    await deployed_one_then_two(world)
    rec = world.reconciler()
    try:
        await rec.refresh()
        await rec.rollback("app", "prod", actor=rec.desired.users["bob"])  # type: ignore[union-attr]
    finally:
        await rec.close()
    assert world.repo.read(ENV_FILE) == env_yaml("1.0")
    assert git(world.repo.path, "status", "--porcelain") == ""


async def test_rollback_pin_deploys_now_and_holds_until_git_changes(world: World) -> None:
    await deployed_one_then_two(world)
    head = git(world.repo.path, "rev-parse", "main")

    refused = world.reconciler()
    try:
        await refused.refresh()
        with pytest.raises(PermissionDenied):
            await refused.rollback("app", "prod", actor=refused.desired.users["dave"], pin=True)  # type: ignore[union-attr]
        assert refused.runs.latest("app", "prod").version == "2.0"  # type: ignore[union-attr]
    finally:
        await refused.close()

    pinned = world.cli("rollback", "app", "prod", "--pin", "--token-file", world.token_file("bob"))
    assert pinned.returncode == 0, pinned.stderr
    assert "pinned to 1.0: succeeded" in pinned.stdout
    assert git(world.repo.path, "rev-parse", "main") == head  # Git untouched: still 2.0
    assert world.deploys() == {"t1": ["1.0", "2.0", "1.0"], "t2": ["1.0", "2.0", "1.0"]}
    assert world.state_log()[0] == "app/prod: 2.0 -> 1.0 succeeded"
    assert "Pinned: 1.0 until the environment changes in Git" in world.state_log("%B")

    rec = world.reconciler()
    try:
        await rec.refresh()
        (action,) = rec.plan().actions
        assert action.reason.value == "pinned"
        record = rec.deployed()[("app", "prod")]
        assert record.version == "1.0" and record.pin is not None
        assert record.pin.desired_version == "2.0"
        assert (await rec.reconcile_once()).runs == []  # held: Git's 2.0 is not redeployed
    finally:
        await rec.close()
    assert world.deploys()["t1"] == ["1.0", "2.0", "1.0"]

    world.repo.commit({ENV_FILE: env_yaml("2.1")}, message="fix forward: 2.1")
    (run,) = await world.reconcile()
    assert (run.state, run.version, run.trigger) == (RunState.SUCCEEDED, "2.1", Trigger.POLL)
    rec = world.reconciler()
    try:
        record = rec.deployed()[("app", "prod")]
        assert record.version == "2.1" and record.pin is None
    finally:
        await rec.close()


# -- release windows ---------------------------------------------------------------------


async def test_run_due_outside_its_window_waits_for_the_opening(world: World) -> None:
    world.clock.at = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)  # Saturday
    world.start("1.0", env_extra=WINDOW)
    (waiting,) = await world.reconcile()
    assert waiting.state is RunState.WAITING_WINDOW
    assert waiting.detail["next_opening"] == "2026-11-30T08:00:00.000000Z"  # Monday 09:00 Berlin
    assert world.deploys() == {"t1": [], "t2": []}

    world.clock.at = dt.datetime(2026, 11, 30, 7, 59, tzinfo=dt.UTC)  # one minute early
    (still,) = await world.reconcile()
    assert (still.id, still.state) == (waiting.id, RunState.WAITING_WINDOW)
    assert world.deploys() == {"t1": [], "t2": []}

    world.clock.at = dt.datetime(2026, 11, 30, 8, 30, tzinfo=dt.UTC)  # Monday 09:30 Berlin
    (ran,) = await world.reconcile()
    assert (ran.id, ran.state) == (waiting.id, RunState.SUCCEEDED)
    assert not ran.forced
    assert world.deploys() == {"t1": ["1.0"], "t2": ["1.0"]}


async def test_manual_deploy_outside_the_window_needs_an_owner_and_is_recorded(
    world: World,
) -> None:
    world.start("1.0", env_extra=WINDOW)  # Wednesday 13:00 Berlin: open
    (first,) = await world.reconcile()
    assert first.state is RunState.SUCCEEDED
    world.clock.at = dt.datetime(2026, 11, 25, 17, 30, tzinfo=dt.UTC)  # 18:30 Berlin: closed
    hotfix = world.repo.commit({ENV_FILE: env_yaml("1.1", WINDOW)}, message="hotfix 1.1")
    (waiting,) = await world.reconcile()
    assert waiting.state is RunState.WAITING_WINDOW

    rec = world.reconciler()
    try:
        await rec.refresh()
        users = rec.desired.users  # type: ignore[union-attr]
        with pytest.raises(PermanentError, match="outside its release window"):
            await rec.deploy("app", "prod", None, actor=users["carol"], trigger=Trigger.MANUAL)
        with pytest.raises(PermissionDenied, match="only an owner"):
            await rec.deploy(
                "app", "prod", None, actor=users["carol"], trigger=Trigger.MANUAL, force=True
            )
        assert world.deploys()["t1"] == ["1.0"]
        started = await rec.deploy(
            "app", "prod", None, actor=users["bob"], trigger=Trigger.MANUAL, force=True
        )
        await rec.wait_idle()
        run = rec.runs.get(started.id)
        assert run is not None and run.state is RunState.SUCCEEDED, run
        assert (run.version, run.forced, run.actor) == ("1.1", True, "bob")
        superseded = rec.runs.get(waiting.id)
        assert superseded is not None and superseded.state is RunState.SUPERSEDED
    finally:
        await rec.close()
    assert world.deploys() == {"t1": ["1.0", "1.1"], "t2": ["1.0", "1.1"]}

    note = git(world.repo.path, "notes", "--ref=quicflow", "show", hotfix)
    (line,) = note.splitlines()
    assert f"quicflow run {run.id}: app/prod 1.0 -> 1.1 succeeded" in line
    assert "forced outside release window" in line and "trigger manual" in line
    assert "by bob" in line  # who forced it, in the note …
    assert "Forced: outside release window" in world.state_log("%B")
    assert "Actor: bob" in world.state_log("%B")  # … and in the state commit
    assert await world.reconcile() == []  # the forced run settled it; nothing waits


# -- masking -----------------------------------------------------------------------------

LEAKY = """\
      set -eu
      echo "plain: $DB_PASSWORD"
      echo "stderr: $DB_PASSWORD" >&2
      printf '%s' "$DB_PASSWORD" | base64
      printf 'user:%s' "$DB_PASSWORD" | base64
      head=$(printf '%s' "$DB_PASSWORD" | cut -c1-9)
      tail=$(printf '%s' "$DB_PASSWORD" | cut -c10-)
      printf 'split: %s' "$head"
      sleep 0.2
      printf '%s end\\n' "$tail"
      echo "failing on purpose with $DB_PASSWORD" >&2
      exit 3
"""


async def test_secrets_are_masked_in_logs_notes_and_errors(world: World) -> None:
    identity, recipient = age.generate_identity()
    password = "pw-" + secrets.token_hex(12)  # 27 characters, base64 on one line
    plain = (
        "credentials:\n  app-db:\n    type: username_password\n"
        f"    username: app\n    password: {password}\n"
    )
    encrypted = sops.encrypt_text(plain, [recipient], documents.RULES)
    assert password not in encrypted
    world.environ = {"SOPS_AGE_KEY": identity}
    variables = "variables:\n  DB_PASSWORD: {secret: app-db, field: password}\n"
    commit = world.repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": project_yaml(LEAKY, variables),
            "projects/app/credentials.sops.yaml": encrypted,
            ENV_FILE: 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )

    rec = world.reconciler()
    try:
        (run,) = (await rec.reconcile_once()).runs
        assert run.state is RunState.FAILED
        lines = rec.logs.read(run.id, limit=10_000)
        steps = rec.runs.steps(run.id)
    finally:
        await rec.close()

    forms = {
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(password.encode()).decode().rstrip("="),
    }
    texts = [line.line for line in lines]
    output = {line.channel: [] for line in lines}
    for line in lines:
        output[line.channel].append(line.line)
    # The script really printed the secret in every form, and every form was masked.
    assert "plain: ***" in output["stdout"]
    assert "stderr: ***" in output["stderr"]
    assert "***" in output["stdout"]  # the aligned base64 line, whole
    shifted = base64.b64encode(f"user:{password}".encode()).decode()
    assert shifted not in texts and any(t.startswith("dXNlcj") and "***" in t for t in texts)
    assert "split: *** end" in output["stdout"]
    assert "failing on purpose with ***" in output["stderr"]

    recorded = [
        *texts,
        run.error,
        *(s.error for s in steps),
        git(world.repo.path, "notes", "--ref=quicflow", "show", commit),
        *world.state_log("%B"),
    ]
    assert run.error and "deploy script failed (exit code 3)" in run.error
    for text in recorded:
        for form in forms:
            assert form not in text, text
        # Neither half of the split write survives on its own either.
        assert password[:9] not in text and password[9:] not in text, text
