"""A deploy asked of a replica that does not hold the environment is committed for the holder.

Two reconcilers share one PostgreSQL store (a fresh schema of the test cluster) and one
config repo, each with its own data dir, as ``serve`` replicas do. The lease decides
which one reconciles ``app/dev``; a webhook-style deploy sent to the other one commits
the version to Git with its trailers and starts nothing there, and the holder deploys
it at its next pass — once; the other replica then answers for that run (its record and
log lines, as SSE follows them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo, git
from postgres import fresh_dsn
from releasing import USERS

from reconciler.engine import queueing
from reconciler.engine.reconciling import Reconciler
from reconciler.errors import PermanentError
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState, Trigger

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/dev.yaml"
PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log && echo "now at $QUICFLOW_VERSION"
"""


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> str:
    dsn = fresh_dsn()
    monkeypatch.setenv("QUICFLOW_STORE", dsn)
    return dsn


def replica(repo: ConfigRepo, data: Path) -> Reconciler:
    return Reconciler(
        GitRepository.open(repo.path),
        data,
        environ={"QUICFLOW_LEASE_TTL": "30"},
        replica=f"replica-{data.name}",  # two replicas in one process: named apart
    )


def deploys(data: Path) -> list[str]:
    log = data / "targets" / "app" / "dev" / "t1" / "deploys.log"
    return log.read_text().split() if log.exists() else []


async def test_a_deploy_sent_to_the_other_replica_is_committed_for_the_holder(
    tmp_path: Path, store: str
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {"quicflow.yaml": USERS, "projects/app/project.yaml": PROJECT, ENV_FILE: env_yaml("1.0")}
    )
    first, second = replica(repo, tmp_path / "a"), replica(repo, tmp_path / "b")
    try:
        # The first takes app/dev alone; the second joins, the first hands app/dev over
        # at its next pass (the bounded-load share), and the second takes it.
        for engine in (first, second, first, second):
            await engine.reconcile_once()
        holders = {
            first.reconciled_elsewhere("app", "dev"),
            second.reconciled_elsewhere("app", "dev"),
        }
        assert "" in holders and len(holders) == 2, holders  # exactly one holds it
        holder, other = (
            (first, second)
            if not first.reconciled_elsewhere("app", "dev")
            else (
                second,
                first,
            )
        )
        data = {first: tmp_path / "a", second: tmp_path / "b"}
        assert deploys(data[holder]) + deploys(data[other]) == ["1.0"]
        before = len(other.runs.list("app", "dev", limit=50)[0])

        handed = await other.deploy_or_queue(
            "app",
            "dev",
            "2.0",
            actor=None,
            trigger=Trigger.WEBHOOK,
            detail={"trigger_id": "app-push", "delivery_id": "d-1", "committer": "Eve"},
        )
        assert isinstance(handed, queueing.HandedOver), handed
        assert (handed.version, handed.holder) == ("2.0", holder.shards.owner)  # type: ignore[union-attr]
        assert handed.commit
        # In Git, with who asked and through which webhook; nothing ran on this replica.
        assert 'version: "2.0"' in git(repo.path, "show", f"{handed.commit}:{ENV_FILE}")
        message = git(repo.path, "log", "-1", "--format=%B", handed.commit)
        assert "app-push" in message and "d-1" in message, message
        assert len(other.runs.list("app", "dev", limit=50)[0]) == before
        assert "2.0" not in deploys(data[other])

        # Asking again for what Git now asks for commits nothing new.
        again = await other.deploy_or_queue(
            "app", "dev", "2.0", actor=None, trigger=Trigger.WEBHOOK, detail={}
        )
        assert isinstance(again, queueing.HandedOver) and again.commit == ""

        report = await holder.reconcile_once()
        (run,) = report.runs
        assert (run.version, run.state) == ("2.0", RunState.SUCCEEDED)
        assert deploys(data[holder]).count("2.0") == 1
        # The other replica answers for the holder's run: its record and its log lines,
        # followed the way SSE follows them, come from the shared store.
        assert other.runs.get(run.id) is not None
        followed = [
            line.line async for batch in other.logs.follow_batches(run.id) for line in batch
        ]
        assert followed == [line.line for line in holder.logs.read(run.id, limit=10_000)]
        assert "now at 2.0" in followed, followed
        assert (await other.reconcile_once()).runs == []
        assert "2.0" not in deploys(data[other])

        # A direct deploy (no hand-over: it must start a run) is refused, naming the holder.
        with pytest.raises(PermanentError, match=f"replica {handed.holder}"):
            await other.deploy("app", "dev", "3.0", actor=None, trigger=Trigger.WEBHOOK)
    finally:
        await first.close()
        await second.close()
