"""One webhook delivery through ``WebhookDeliveries``, without HTTP.

Headers are a plain dict, the body bytes, and the records, credentials and engine are
in-memory fakes beside a real config repo: what the trigger decides, records and asks
of the engine is checked here; ``tests/api/test_webhooks.py`` checks the same path over
real HTTP.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gitrepos import ConfigRepo

from reconciler import errors
from reconciler.credential import age, documents, sops
from reconciler.engine import queueing
from reconciler.gitops import model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Trigger
from reconciler.trigger import deliveries, signatures

SECRET = "app-hook-secret-5f1d0c"
SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

FILES = {
    "quicflow.yaml": "users:\n  - {username: alice, email: alice@example.com, is_admin: true}\n",
    "projects/app/project.yaml": """\
members:
  - {user: alice, role: owner}
deploy:
  type: script
  script: {run: "true"}
triggers:
  webhooks:
    - {name: gh, source: github, secret: app-hook, branches: [main], events: [push], action: deploy, target_env: dev}
""",
    "projects/app/environments/dev.yaml": 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\n',
}


@dataclass
class Records:
    """A fake of the trigger records, in memory (the tests below with ``TriggerRecords``
    use the real store on SQLite)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    claimed: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(
        self, at: datetime, trigger_id: str, status: str, reason: str = "", **fields: str
    ) -> int:
        self.rows.append({"trigger_id": trigger_id, "status": status, "reason": reason, **fields})
        return len(self.rows)

    def claim_and_add(
        self,
        at: datetime,
        trigger_id: str,
        claim: str,
        status: str,
        reason: str = "",
        body_sha256: str = "",
        **fields: str,
    ) -> tuple[str, int]:
        if not self.claim_delivery(trigger_id, claim, at, body_sha256):
            status, reason = deliveries.SKIPPED, f"duplicate delivery {claim}: already handled"
        return reason, self.add(at, trigger_id, status, reason, **fields)

    def claim_delivery(
        self, trigger_id: str, delivery_id: str, at: datetime, body_sha256: str = ""
    ) -> bool:
        fresh = (trigger_id, delivery_id) not in self.claimed
        self.claimed.setdefault((trigger_id, delivery_id), body_sha256)
        return fresh

    def claimed_body(self, trigger_id: str, delivery_id: str) -> str | None:
        return self.claimed.get((trigger_id, delivery_id))

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None:
        self.claimed.pop((trigger_id, delivery_id), None)

    def update(self, record_id: int, status: str, reason: str, run_id: str = "") -> None:
        self.rows[record_id - 1].update(status=status, reason=reason, run_id=run_id)

    def tally(self, record_id: int, occurrences: int, last_at: datetime, reason: str) -> None:
        self.rows[record_id - 1].update(occurrences=occurrences, reason=reason)


class Credential:
    def __init__(self, value: str):
        self._value = value

    def value(self) -> str:
        return self._value


@dataclass
class Credentials:
    """A credential manager holding the one webhook secret; counts the (audited) reads."""

    reads: int = 0

    def get(self, name: str, project: str | None, purpose: str, address: str) -> Credential:
        self.reads += 1
        if name != "app-hook":
            raise KeyError(name)
        return Credential(SECRET)


@dataclass
class Run:
    id: str


class Engine:
    """What the delivery path asks of the engine: the desired state and ``deploy``."""

    def __init__(self, desired: model.DesiredState):
        self.desired = desired
        self.deploys: list[tuple[Any, ...]] = []
        self.fail_with: Exception | None = None
        self.busy_with: str | None = None  # the id of a run "executing": deploys queue
        self.held_by: str | None = None  # another replica holds the environment
        self.listeners: list[Any] = []

    async def deploy(self, project: str, env: str, version: str | None, **options: Any) -> Run:
        if self.fail_with is not None:
            raise self.fail_with
        self.deploys.append((project, env, version, options["trigger"], options["actor"]))
        return Run(f"run-{len(self.deploys)}")

    async def deploy_or_queue(
        self, project: str, env: str, version: str | None, **options: Any
    ) -> Run | queueing.QueuedDeploy | queueing.HandedOver:
        listener = options.pop("listener")
        if self.held_by is not None:
            return queueing.HandedOver(project, env, version or "", self.held_by, "c0ffee" * 6)
        if self.busy_with is None:
            return await self.deploy(project, env, version, **options)
        self.listeners.append(listener)
        return queueing.QueuedDeploy(
            project, env, version or "", options["trigger"], self.busy_with, version or ""
        )


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    # The loader checks that the trigger's secret names a credential the project may use.
    _, recipient = age.generate_identity()
    tree = sops.encrypt_tree(
        {"credentials": {"app-hook": {"type": "access_token", "token": SECRET}}},
        [recipient],
        documents.RULES,
    )
    repo = ConfigRepo(tmp_path / "config")
    repo.commit({**FILES, "projects/app/credentials.sops.yaml": sops.dump_yaml(tree)})
    return Engine(Loader(GitRepository.open(str(repo.path))).load().raise_for_problems())


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture
def credentials() -> Credentials:
    return Credentials()


@pytest.fixture
def handler(
    engine: Engine, records: Records, credentials: Credentials
) -> deliveries.WebhookDeliveries:
    return deliveries.WebhookDeliveries(engine, records, credentials, body_limit=1024)  # type: ignore[arg-type]


def push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "after": SHA,
            "deleted": False,
            "head_commit": {"id": SHA, "committer": {"name": "Ada", "email": "ada@example.com"}},
            "repository": {"clone_url": "https://github.com/octo/app.git"},
        }
    ).encode()


def headers(body: bytes, delivery: str | None = None, secret: str = SECRET) -> dict[str, str]:
    # Names as a client spells them: the path must not depend on a case-insensitive mapping.
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signatures.github_signature(body, secret),
    }


async def test_a_push_deploys_the_commit_once(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    body = push()
    sent = headers(body, "d-1")
    result = await handler.handle("app.gh", sent, body, "192.0.2.7", NOW)
    assert result == deliveries.DeliveryResult(
        202, deliveries.SUCCESS, "run run-1 started", 1, run_id="run-1"
    )
    assert result.accepted
    assert engine.deploys == [("app", "dev", SHA, Trigger.WEBHOOK, None)]
    assert records.rows[0]["status"] == deliveries.SUCCESS
    assert records.rows[0]["source_ip"] == "192.0.2.7"
    assert records.rows[0]["committer"] == "Ada <ada@example.com>"

    again = await handler.handle("app.gh", sent, body, "192.0.2.7", NOW)
    assert (again.status, again.code) == (200, deliveries.SKIPPED)
    assert again.message == "duplicate delivery d-1: already handled"
    assert len(engine.deploys) == 1


async def test_a_filtered_push_is_skipped_and_claimed(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    body = push("refs/heads/feature/x")
    result = await handler.handle("app.gh", headers(body, "d-2"), body, "192.0.2.7", NOW)
    assert (result.status, result.code) == (200, deliveries.SKIPPED)
    assert result.message == "branch 'feature/x' matches none of main"
    assert result.record_id == 1
    assert ("app.gh", "d-2") in records.claimed
    assert engine.deploys == []


async def test_refusals_name_their_cause_and_start_nothing(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    body = push()
    unknown = await handler.handle("app.nope", headers(body), body, "192.0.2.7", NOW)
    assert (unknown.status, unknown.code) == (401, "webhook_rejected")  # as a wrong secret
    assert records.rows == []  # nothing to attribute it to

    too_large = await handler.handle("app.gh", headers(body), None, "192.0.2.7", NOW)
    assert (too_large.status, too_large.code) == (413, "body_too_large")
    assert too_large.message == "body larger than 1024 bytes"

    forged = await handler.handle("app.gh", headers(body, secret="wrong"), body, "192.0.2.7", NOW)
    assert (forged.status, forged.code, forged.field) == (
        401,
        "webhook_rejected",
        signatures.GITHUB_SIGNATURE,
    )
    assert not forged.accepted
    assert records.rows[-1]["event"] == "push"
    assert [row["status"] for row in records.rows] == [deliveries.FAILED, deliveries.FAILED]
    assert engine.deploys == []


async def test_a_refused_action_releases_the_claim_for_redelivery(
    handler: deliveries.WebhookDeliveries, engine: Engine
) -> None:
    body = push()
    sent = headers(body, "d-3")
    engine.fail_with = errors.PermanentError("dev is frozen")
    refused = await handler.handle("app.gh", sent, body, "192.0.2.7", NOW)
    assert (refused.status, refused.code, refused.message) == (
        422,
        "action_refused",
        "dev is frozen",
    )

    engine.fail_with = None
    redelivered = await handler.handle("app.gh", sent, body, "192.0.2.7", NOW)
    assert (redelivered.status, redelivered.run_id) == (202, "run-1")


async def test_the_secret_is_read_once_for_many_deliveries(
    handler: deliveries.WebhookDeliveries, credentials: Credentials
) -> None:
    body = push("refs/heads/other")
    for _ in range(5):
        await handler.handle("app.gh", headers(body), body, "192.0.2.7", NOW)
    assert credentials.reads == 1


async def test_the_config_webhook_needs_one_configured(
    handler: deliveries.WebhookDeliveries,
) -> None:
    body = push()
    result = await handler.handle_config(headers(body), body, "192.0.2.7", NOW)
    assert (result.status, result.code) == (404, "not_found")


async def test_a_queued_push_is_recorded_queued_then_what_it_became(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    engine.busy_with = "r-busy"
    body = push()
    result = await handler.handle("app.gh", headers(body, "d-q"), body, "192.0.2.7", NOW)
    assert (result.status, result.code, result.run_id) == (202, deliveries.QUEUED, None)
    assert result.message.startswith("queued behind run r-busy: ")
    assert records.rows[0]["status"] == deliveries.QUEUED and "run_id" not in records.rows[0]
    (listener,) = engine.listeners
    listener(queueing.QueueOutcome(queueing.STARTED, "run r-2 started", "r-2"))
    assert (records.rows[0]["status"], records.rows[0]["run_id"]) == (deliveries.SUCCESS, "r-2")
    assert ("app.gh", "d-q") in records.claimed  # acted on: a redelivery is a duplicate


async def test_a_push_to_a_replica_that_does_not_hold_the_env_is_handed_over(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    engine.held_by = "replica-2"
    body = push()
    result = await handler.handle("app.gh", headers(body, "d-h"), body, "192.0.2.7", NOW)
    assert (result.status, result.code, result.run_id) == (202, deliveries.SUCCESS, None)
    assert "committed c0ffeec0ff; replica replica-2 deploys it" in result.message
    assert records.rows[0]["status"] == deliveries.SUCCESS
    assert ("app.gh", "d-h") in records.claimed  # acted on: a redelivery is a duplicate


async def test_a_queued_push_that_fails_to_start_may_be_redelivered(
    handler: deliveries.WebhookDeliveries, engine: Engine, records: Records
) -> None:
    engine.busy_with = "r-busy"
    body = push()
    await handler.handle("app.gh", headers(body, "d-f"), body, "192.0.2.7", NOW)
    (listener,) = engine.listeners
    listener(queueing.QueueOutcome(queueing.FAILED, "the reconciler stopped"))
    assert (records.rows[0]["status"], records.rows[0]["reason"]) == (
        deliveries.FAILED,
        "the reconciler stopped",
    )
    assert ("app.gh", "d-f") not in records.claimed
    engine.busy_with = None
    again = await handler.handle("app.gh", headers(body, "d-f"), body, "192.0.2.7", NOW)
    assert (again.status, again.code) == (202, deliveries.SUCCESS)


async def test_what_a_queued_push_became_is_kept_until_its_record_exists(
    records: Records,
) -> None:
    """The engine may decide before the queued record is written: nothing is lost."""
    later = deliveries._QueuedRecord(records, "app.gh", "d-e")
    later.tell(queueing.QueueOutcome(queueing.SUPERSEDED, "superseded by a newer request"))
    record_id = records.add(NOW, "app.gh", deliveries.QUEUED, "queued")
    later.bind(record_id)
    assert records.rows[0]["status"] == deliveries.SUPERSEDED


# -- on the real trigger records (SQLite) -------------------------------------------------

GITEE_FILES = {
    **FILES,
    "projects/app/project.yaml": FILES["projects/app/project.yaml"].replace(
        "triggers:\n", "repo: {url: APP_REPO}\ntriggers:\n"
    )
    + "    - {name: ge, source: gitee, secret: app-hook, branches: [main], events: [push, tag],"
    " action: deploy, target_env: dev}\n",
}


@pytest.fixture
def stored(tmp_path: Path) -> Any:
    from reconciler.store.database import Database
    from reconciler.store.triggers import TriggerRecords

    db = Database.open(tmp_path / "data")
    yield TriggerRecords(db)
    db.close()


@pytest.fixture
def app_repo(tmp_path: Path) -> tuple[ConfigRepo, str]:
    """A real app repo with one commit on main and a tag on it."""
    from gitrepos import git

    repo = ConfigRepo(tmp_path / "app")
    commit = repo.commit({"main.py": "print('hi')\n"}, message="app")
    git(repo.path, "tag", "v1.0.0")
    return repo, commit


@pytest.fixture
def gitee_engine(tmp_path: Path, app_repo: tuple[ConfigRepo, str]) -> Engine:
    _, recipient = age.generate_identity()
    tree = sops.encrypt_tree(
        {"credentials": {"app-hook": {"type": "access_token", "token": SECRET}}},
        [recipient],
        documents.RULES,
    )
    files = {k: v.replace("APP_REPO", str(app_repo[0].path)) for k, v in GITEE_FILES.items()}
    repo = ConfigRepo(tmp_path / "gitee-config")
    repo.commit({**files, "projects/app/credentials.sops.yaml": sops.dump_yaml(tree)})
    return Engine(Loader(GitRepository.open(str(repo.path))).load().raise_for_problems())


def gitee_body(commit: str, ref: str = "refs/heads/main", note: str = "") -> bytes:
    return json.dumps(
        {
            "hook_name": "push_hooks",
            "ref": ref,
            "after": commit,
            "head_commit": {"id": commit, "committer": {"name": "红薯", "email": "g@oschina.cn"}},
            "note": note,
        }
    ).encode()


def gitee_headers(stamp: int, password: bool = False) -> dict[str, str]:
    token = SECRET if password else signatures.gitee_signature(stamp, SECRET)
    return {"X-Gitee-Event": "Push Hook", "X-Gitee-Token": token, "X-Gitee-Timestamp": str(stamp)}


async def test_a_captured_gitee_token_and_timestamp_cannot_carry_another_body(
    gitee_engine: Engine, stored: Any, credentials: Credentials, app_repo: tuple[ConfigRepo, str]
) -> None:
    from reconciler.trigger import commits

    check = commits.AppRepoCommits(Path(app_repo[0].path).parent / "cache").verify
    handler = deliveries.WebhookDeliveries(
        gitee_engine,  # type: ignore[arg-type]
        stored,
        credentials,  # type: ignore[arg-type]
        body_limit=4096,
        commit_check=check,
    )
    stamp = int(NOW.timestamp() * 1000)
    sent = gitee_headers(stamp)
    first = await handler.handle("app.ge", sent, gitee_body(app_repo[1]), "192.0.2.7", NOW)
    assert (first.status, first.run_id) == (202, "run-1")
    replay = await handler.handle("app.ge", sent, gitee_body(app_repo[1]), "192.0.2.7", NOW)
    assert (replay.status, replay.code) == (200, deliveries.SKIPPED)
    forged_body = gitee_body(app_repo[1], note="forged")
    forged = await handler.handle("app.ge", sent, forged_body, "192.0.2.9", NOW)
    assert (forged.status, forged.field) == (401, signatures.GITEE_TIMESTAMP)
    assert "already received with another body" in forged.message
    assert len(gitee_engine.deploys) == 1

    # A fresh signature naming a commit the app repo does not have starts nothing.
    missing = "f" * 40
    later = gitee_headers(stamp + 1000)
    refused = await handler.handle("app.ge", later, gitee_body(missing), "192.0.2.7", NOW)
    assert (refused.status, refused.code) == (422, "action_refused")
    assert f"commit {missing} does not exist in {app_repo[0].path}" in refused.message
    # A tag push must name the commit its tag points at.
    tag = gitee_body(app_repo[1], ref="refs/tags/v1.0.0")
    tagged = await handler.handle("app.ge", gitee_headers(stamp + 2000), tag, "192.0.2.7", NOW)
    assert tagged.status == 202
    assert [d[2] for d in gitee_engine.deploys] == [app_repo[1], "v1.0.0"]
    found, _ = stored.list("app.ge")
    assert [r.status for r in found][:2] == [deliveries.SUCCESS, deliveries.FAILED]


async def test_refusals_are_counted_per_trigger_and_source_in_few_records(
    handler: deliveries.WebhookDeliveries, engine: Engine, stored: Any
) -> None:
    from reconciler.trigger import refusals

    class Ticks:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    ticks = Ticks()
    handler.records = stored
    handler.refusals = refusals.RefusalCounter(limit=10, window=60, record_each=2, clock=ticks)
    body = push()
    forged = headers(body, secret="wrong")
    codes = [
        (await handler.handle("app.gh", forged, body, "192.0.2.7", NOW)).status for _ in range(30)
    ]
    assert codes == [401] * 10 + [429] * 20
    other = await handler.handle("app.gh", forged, body, "198.51.100.1", NOW)
    assert other.status == 401  # another source is counted on its own
    handler.flush(NOW)
    found, total = stored.list("app.gh")
    assert total == 4  # 2 + one aggregate for 192.0.2.7, 1 for 198.51.100.1
    by_source = sorted((r.source_ip, r.occurrences) for r in found)
    assert by_source == [("192.0.2.7", 1), ("192.0.2.7", 1), ("192.0.2.7", 28), ("198.51.100.1", 1)]
    ticks.now = 61.0  # a new window: refused, verified and recorded again
    again = await handler.handle("app.gh", forged, body, "192.0.2.7", NOW)
    assert again.status == 401 and stored.list("app.gh")[1] == 5
    assert engine.deploys == []
