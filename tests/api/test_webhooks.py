"""Webhooks over real HTTP (uvicorn): real signed deliveries from GitHub, GitLab and Gitee.

Each case asserts the answer, the trigger record it left and the runs the real engine
started — a refused or skipped delivery must never start a run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from api import driving
from api.configs import CONFIG_HOOK_SECRET, HOOK_SECRET
from api.servers import LiveServer
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import Run, RunState, Trigger
from reconciler.trigger import signatures

SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"


def github_push(ref: str = "refs/heads/main", sha: str = SHA) -> bytes:
    payload = {
        "ref": ref,
        "before": "17c497ccc7cca9c2f735aa07e9e3813060ce9a6a",
        "after": sha,
        "deleted": False,
        "head_commit": {
            "id": sha,
            "message": "Ship it",
            "committer": {"name": "Ada", "email": "ada@example.com"},
        },
        "pusher": {"name": "ada", "email": "ada@example.com"},
        "repository": {"clone_url": "https://github.com/octo/app.git"},
    }
    return json.dumps(payload).encode()


def github_headers(
    body: bytes, event: str = "push", delivery: str | None = None, secret: str = HOOK_SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signatures.github_signature(body, secret),
    }


def gitlab_push(ref: str = "refs/heads/main", tag: bool = False) -> bytes:
    payload = {
        "object_kind": "tag_push" if tag else "push",
        "ref": ref,
        "after": SHA,
        "checkout_sha": SHA,
        "user_name": "John Smith",
        "user_email": "john@example.com",
        "commits": [{"id": SHA, "author": {"name": "Jordi", "email": "jordi@example.org"}}],
        "project": {"git_http_url": "https://gitlab.example.com/octo/app.git"},
    }
    return json.dumps(payload).encode()


def gitlab_headers(
    token: str = HOOK_SECRET, event: str = "Push Hook", key: str | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": token,
        "Idempotency-Key": key or str(uuid.uuid4()),
    }


def gitee_push(ref: str = "refs/heads/main") -> bytes:
    payload = {
        "hook_name": "push_hooks",
        "ref": ref,
        "after": SHA,
        "deleted": False,
        "head_commit": {"id": SHA, "committer": {"name": "红薯", "email": "git@oschina.cn"}},
        "repository": {"clone_url": "https://gitee.com/oschina/app.git"},
    }
    return json.dumps(payload, ensure_ascii=False).encode()


def gitee_headers(
    timestamp_ms: int | None = None, password: bool = False, secret: str = HOOK_SECRET
) -> dict[str, str]:
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    token = secret if password else signatures.gitee_signature(stamp, secret)
    return {
        "Content-Type": "application/json",
        "X-Gitee-Event": "Push Hook",
        "X-Gitee-Token": token,
        "X-Gitee-Timestamp": str(stamp),
    }


def records(app: Starlette, trigger_id: str) -> list[Any]:
    """The trigger records of ``trigger_id``, newest first."""
    found, _ = app.state.records.list(trigger_id=trigger_id)
    return found


def only_record(app: Starlette, trigger_id: str) -> Any:
    (record,) = records(app, trigger_id)
    return record


def webhook_runs(engine: Reconciler) -> list[Run]:
    """The runs webhooks started, oldest first."""
    found, _ = engine.runs.list(trigger=Trigger.WEBHOOK, limit=100)
    return list(reversed(found))


async def post(server: LiveServer, path: str, body: bytes, headers: dict[str, str]) -> Any:
    async with server.client() as client:
        return await client.post(path, content=body, headers=headers)


HOOK = "/api/release/webhooks/{}/trigger"


# -- GitHub ------------------------------------------------------------------------------


async def test_github_push_to_main_deploys_the_commit(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    answer = await post(server, HOOK.format("app.gh"), body, github_headers(body, delivery="d-1"))
    assert answer.status_code == 202, answer.text
    (run,) = webhook_runs(engine)
    assert (run.project, run.env, run.version) == ("app", "dev", SHA)
    assert run.actor == "" and run.trigger is Trigger.WEBHOOK  # started by the system
    assert run.detail["delivery_id"] == "d-1" and run.detail["commit"] == SHA
    await engine.wait_idle()
    assert driving.current(engine, run).state is RunState.SUCCEEDED
    record = only_record(app, "app.gh")
    assert (record.status, record.branch, record.commit, record.committer, record.kind) == (
        "success",
        "main",
        SHA,
        "Ada <ada@example.com>",
        "push",
    )
    assert record.run_id == answer.json()["run_id"]
    assert record.delivery_id == "d-1" and record.source == "github"


async def test_github_wrong_signature_is_refused_and_recorded(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    headers = github_headers(body, secret="not-the-secret")
    answer = await post(server, HOOK.format("app.gh"), body, headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["field"] == "X-Hub-Signature-256"
    assert webhook_runs(engine) == []
    record = only_record(app, "app.gh")
    assert record.status == "failed" and "signature does not match" in record.reason


async def test_github_body_changed_after_signing_is_refused(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    headers = github_headers(body)
    answer = await post(server, HOOK.format("app.gh"), github_push(sha="f" * 40), headers)
    assert answer.status_code == 401
    assert webhook_runs(engine) == []


async def test_github_missing_signature_header_is_named(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    headers = github_headers(body)
    del headers["X-Hub-Signature-256"]
    answer = await post(server, HOOK.format("app.gh"), body, headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == {
        "code": "webhook_rejected",
        "message": "header is missing",
        "field": "X-Hub-Signature-256",
    }
    assert webhook_runs(engine) == []
    assert only_record(app, "app.gh").status == "failed"


async def test_replayed_delivery_is_acknowledged_but_acted_on_once(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    headers = github_headers(body, delivery="same-delivery")
    first = await post(server, HOOK.format("app.gh"), body, headers)
    again = await post(server, HOOK.format("app.gh"), body, headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["status"] == "skipped" and "duplicate delivery" in again.json()["reason"]
    assert len(webhook_runs(engine)) == 1
    newest, oldest = records(app, "app.gh")
    assert (oldest.status, newest.status) == ("success", "skipped")


async def test_oversized_body_is_refused_before_verifying(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = b'{"ref": "refs/heads/main", "pad": "' + b"x" * (1 << 20) + b'"}'
    answer = await post(server, HOOK.format("app.gh"), body, github_headers(body))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"
    assert webhook_runs(engine) == []
    assert "larger than 1048576 bytes" in only_record(app, "app.gh").reason


async def test_push_to_a_branch_outside_the_filter_is_skipped(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push("refs/heads/feature/login")
    answer = await post(server, HOOK.format("app.gh"), body, github_headers(body))
    assert answer.status_code == 200
    assert webhook_runs(engine) == []
    record = only_record(app, "app.gh")
    assert record.status == "skipped" and record.branch == "feature/login"
    assert "matches none of main, release/*" in record.reason


async def test_branch_globs_match_one_path_segment(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    for ref in ("refs/heads/release/1.2", "refs/heads/release/1.2/hotfix"):
        body = github_push(ref)
        await post(server, HOOK.format("app.gh"), body, github_headers(body))
    assert [r.version for r in webhook_runs(engine)] == [SHA]
    assert [r.status for r in records(app, "app.gh")] == ["skipped", "success"]


async def test_github_tag_deploys_the_tag_name(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push("refs/tags/v2.0.1")
    answer = await post(server, HOOK.format("app.gh"), body, github_headers(body))
    assert answer.status_code == 202
    (run,) = webhook_runs(engine)
    assert (run.project, run.env, run.version) == ("app", "dev", "v2.0.1")
    record = only_record(app, "app.gh")
    assert (record.kind, record.tag, record.branch) == ("tag", "v2.0.1", "")


async def test_github_form_encoded_delivery_is_read_from_its_payload_field(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    """GitHub's default content type: the signature covers the form body as sent."""
    form = urlencode({"payload": github_push().decode()}).encode()
    headers = {**github_headers(form), "Content-Type": "application/x-www-form-urlencoded"}
    answer = await post(server, HOOK.format("app.gh"), form, headers)
    assert answer.status_code == 202, answer.text
    (run,) = webhook_runs(engine)
    assert run.version == SHA
    assert only_record(app, "app.gh").committer == "Ada <ada@example.com>"


async def test_a_form_encoded_delivery_without_payload_says_to_pick_json(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    form = b"ref=refs%2Fheads%2Fmain"
    headers = {**github_headers(form), "Content-Type": "application/x-www-form-urlencoded"}
    answer = await post(server, HOOK.format("app.gh"), form, headers)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == "payload" and "application/json" in error["message"]
    assert webhook_runs(engine) == []


async def test_a_flood_of_forged_deliveries_is_rate_limited_and_counted_in_few_records(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    statuses: list[int] = []
    retry_after = set()
    async with server.client(limits=httpx.Limits(max_connections=50)) as client:

        async def forged() -> None:
            headers = github_headers(body, secret="forged")
            answer = await client.post(HOOK.format("app.gh"), content=body, headers=headers)
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                retry_after.add(answer.headers["Retry-After"])
                assert answer.json()["error"]["code"] == "too_many_refusals"

        first = await client.post(
            HOOK.format("app.gh"), content=body, headers=github_headers(body, secret="forged")
        )
        statuses.append(first.status_code)
        for _ in range(37):  # 999 more, 27 at a time
            await asyncio.gather(*(forged() for _ in range(27)))
    assert len(statuses) == 1000
    assert statuses.count(401) == 20  # the limit per trigger, source and minute
    assert statuses.count(429) == 980
    assert retry_after and all(0 < int(r) <= 60 for r in retry_after)
    app.state.webhooks.flush()  # what the server does on stop; counts go out every second
    found = records(app, "app.gh")
    assert len(found) == 4  # three refusals of their own, then one record counting the rest
    aggregate, *singles = found
    assert [r.occurrences for r in singles] == [1, 1, 1]
    assert all("signature does not match" in r.reason for r in singles)
    assert aggregate.occurrences == 997 and aggregate.source_ip == "127.0.0.1"
    assert "997 more deliveries from 127.0.0.1 refused" in aggregate.reason
    assert sum(r.occurrences for r in found) == 1000
    assert webhook_runs(engine) == []
    # Another trigger is counted on its own, and the API shows the count.
    other = await post(server, HOOK.format("app.gl"), gitlab_push(), gitlab_headers("forged"))
    assert other.status_code == 401
    async with server.client(app.state.tokens.create("alice")) as client:
        listed = await client.get("/api/release/triggers/records", params={"trigger": "app.gh"})
    assert listed.json()["items"][0]["count"] == 997


async def test_tag_on_a_push_only_trigger_is_skipped(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = gitee_push("refs/tags/v2.0.1")
    headers = gitee_headers() | {"X-Gitee-Event": "Tag Push Hook"}
    answer = await post(server, HOOK.format("app.ge"), body, headers)
    assert answer.status_code == 200
    assert webhook_runs(engine) == []
    assert "tag events are not enabled" in only_record(app, "app.ge").reason


async def test_ping_and_deleted_branches_are_skipped(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    ping = b'{"zen": "Keep it logically awesome."}'
    assert (
        await post(server, HOOK.format("app.gh"), ping, github_headers(ping, event="ping"))
    ).status_code == 200
    deleted = json.dumps({"ref": "refs/heads/main", "after": "0" * 40, "deleted": True}).encode()
    assert (
        await post(server, HOOK.format("app.gh"), deleted, github_headers(deleted))
    ).status_code == 200
    assert webhook_runs(engine) == []
    newest, oldest = records(app, "app.gh")
    assert "'ping' is not a branch or tag push" in oldest.reason
    assert "was deleted" in newest.reason


async def test_a_build_webhook_for_a_project_that_does_not_build_is_refused_and_recorded(
    server: LiveServer, app: Starlette, engine: Reconciler, tokens: dict[str, str]
) -> None:
    """The real engine has a Builder; project ``app`` enables no build → 422, a failed record."""
    body = github_push("refs/tags/v3")
    answer = await post(server, HOOK.format("app.gh-build"), body, github_headers(body))
    assert answer.status_code == 422, answer.text
    assert "no enabled build settings" in answer.json()["error"]["message"]
    async with server.client(tokens["alice"]) as client:
        listed = await client.get(
            "/api/release/triggers/records", params={"trigger": "app.gh-build"}
        )
    (record,) = listed.json()["items"]
    assert record["status"] == "failed" and "no enabled build settings" in record["reason"]
    assert engine.builder.store.list("app", 10) == []
    assert engine.runs.list()[1] == 0


async def test_disabled_and_unknown_triggers(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    disabled = await post(server, HOOK.format("app.gh-off"), body, github_headers(body))
    assert disabled.status_code == 200 and disabled.json()["reason"] == "trigger is disabled"
    unknown = await post(server, HOOK.format("app.nope"), body, github_headers(body))
    assert unknown.status_code == 401  # not signed for app.nope: unauthenticated, as below
    assert engine.runs.list()[1] == 0
    assert records(app, "app.nope") == []


async def test_unknown_and_known_triggers_answer_unauthenticated_callers_alike(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    """A caller without the secret cannot tell a declared trigger name from an unknown one."""
    body = github_push()
    forged = github_headers(body, secret="guessed")
    answers = set()
    for declared in ("app.gh", "app.gl", "app.ge", "other.none", "nope", "app.gh-build"):
        answer = await post(server, HOOK.format(declared), body, forged)
        answers.add((declared, answer.status_code, answer.text))
    known = {(s, text) for name, s, text in answers if name in ("app.gh", "app.gl", "app.ge")}
    for name, status, text in answers:
        assert (status, text) in known, name
    assert {s for _, s, _ in answers} == {401}
    assert records(app, "nope") == [] and records(app, "other.none") == []
    # The same unknown name always answers the same way (it looks like one provider's).
    again = await post(server, HOOK.format("nope"), body, forged)
    assert ("nope", again.status_code, again.text) in answers


async def test_a_refused_action_is_recorded_and_may_be_redelivered(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    """A deploy another live process executes cannot be queued behind from here: the push
    is refused (422) and recorded, and the provider's redelivery is acted on once that
    process is gone. (A run of this process queues the push instead: see below.)"""
    other = subprocess.Popen(["sleep", "60"])
    try:
        engine.runs.create(
            Run(
                id="r-elsewhere",
                project="app",
                env="dev",
                version="0.9.0",
                config_commit="",
                config_hash="",
                trigger=Trigger.MANUAL,
                state=RunState.RUNNING,
                detail={"owner": f"{socket.gethostname()}:{other.pid}:"},
            )
        )
        body = github_push()
        headers = github_headers(body, delivery="retry-me")
        refused = await post(server, HOOK.format("app.gh"), body, headers)
        assert refused.status_code == 422
        assert (
            only_record(app, "app.gh").reason
            == "a run is in progress for app/dev; cancel it or wait"
        )
        assert webhook_runs(engine) == []
    finally:
        other.kill()
        other.wait()
    retried = await post(server, HOOK.format("app.gh"), body, headers)
    assert retried.status_code == 202
    (run,) = webhook_runs(engine)
    assert run.id == retried.json()["run_id"] and run.detail["delivery_id"] == "retry-me"
    assert engine.runs.list("app", "dev")[1] == 2  # the other process's one and the redelivered one


# -- pushes while a deploy runs: queued, newest wins -----------------------------------


def dev_versions(engine: Reconciler) -> list[str]:
    """The versions of app/dev's runs, oldest first."""
    found, _ = engine.runs.list("app", "dev", limit=100)
    return [r.version for r in reversed(found)]


async def test_a_push_during_a_running_deploy_is_queued_and_deployed_after(
    server: LiveServer, app: Starlette, engine: Reconciler, api_repo: ConfigRepo
) -> None:
    busy = await driving.running(engine, "dev")  # a deploy of app/dev executes
    body = github_push()
    answer = await post(server, HOOK.format("app.gh"), body, github_headers(body, delivery="d-q"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued" and "run_id" not in answer.json()
    record = only_record(app, "app.gh")
    assert (record.status, record.run_id) == ("queued", "")
    assert record.reason.startswith(f"queued behind run {busy.id}: ")
    assert webhook_runs(engine) == []  # nothing started beside the running deploy
    assert f'version: "{SHA}"' in api_repo.read("projects/app/environments/dev.yaml")

    await engine.cancel(busy.id, driving.admin(engine))  # the running deploy ends
    await driving.until(
        lambda: only_record(app, "app.gh").status != "queued", "the queued push to start"
    )
    (run,) = webhook_runs(engine)
    record = only_record(app, "app.gh")
    assert (record.status, record.run_id) == ("success", run.id)
    assert record.reason == f"run {run.id} started (queued behind run {busy.id})"
    assert (run.version, run.detail["delivery_id"]) == (SHA, "d-q")
    await engine.wait_idle()
    assert driving.current(engine, run).state is RunState.SUCCEEDED
    assert (await engine.reconcile_once(only="app/dev")).runs == []  # Git agrees: it sticks
    assert dev_versions(engine) == ["2.0.0-slow", SHA]


async def test_of_two_queued_pushes_only_the_newest_is_deployed(
    server: LiveServer, app: Starlette, engine: Reconciler, api_repo: ConfigRepo
) -> None:
    older, newer = "a" * 40, "b" * 40
    busy = await driving.running(engine, "dev")
    for sha, delivery in ((older, "d-old"), (newer, "d-new")):
        body = github_push(sha=sha)
        headers = github_headers(body, delivery=delivery)
        answer = await post(server, HOOK.format("app.gh"), body, headers)
        assert (answer.status_code, answer.json()["status"]) == (202, "queued"), answer.text
    newest, oldest = records(app, "app.gh")
    assert (oldest.delivery_id, oldest.status) == ("d-old", "superseded")
    assert oldest.reason == f"superseded by a newer request for {newer} before it could start"
    assert (newest.delivery_id, newest.status) == ("d-new", "queued")

    await engine.cancel(busy.id, driving.admin(engine))
    await driving.until(
        lambda: records(app, "app.gh")[0].status != "queued", "the newest push to start"
    )
    (run,) = webhook_runs(engine)
    assert (run.version, run.detail["delivery_id"]) == (newer, "d-new")
    assert records(app, "app.gh")[0].run_id == run.id
    await engine.wait_idle()
    assert driving.current(engine, run).state is RunState.SUCCEEDED
    assert (await engine.reconcile_once(only="app/dev")).runs == []
    assert dev_versions(engine) == ["2.0.0-slow", newer]  # the older push never ran
    assert oldest.run_id == "" and records(app, "app.gh")[1].status == "superseded"


async def test_a_queued_push_the_reconciler_stops_before_may_be_redelivered(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    busy = await driving.running(engine, "dev")
    body = github_push()
    headers = github_headers(body, delivery="d-stop")
    queued = await post(server, HOOK.format("app.gh"), body, headers)
    assert queued.json()["status"] == "queued"
    engine.actions.close()  # what stopping the reconciler does first …
    await engine.cancel(busy.id, driving.admin(engine))  # … before its runs are cancelled
    await engine.wait_idle()
    assert webhook_runs(engine) == []  # a stopping reconciler starts nothing new
    record = only_record(app, "app.gh")
    assert (record.status, record.reason) == (
        "failed",
        "the reconciler stopped before the queued deploy could start",
    )
    again = await post(server, HOOK.format("app.gh"), body, headers)  # the provider redelivers
    assert again.status_code == 202 and again.json()["status"] == "success", again.text
    (run,) = webhook_runs(engine)
    assert run.detail["delivery_id"] == "d-stop"


# -- GitLab ------------------------------------------------------------------------------


async def test_gitlab_push_and_tag(server: LiveServer, app: Starlette, engine: Reconciler) -> None:
    push = await post(server, HOOK.format("app.gl"), gitlab_push(), gitlab_headers())
    await engine.wait_idle()  # the push's run ends first: a deploy refuses while one runs
    tag = await post(
        server,
        HOOK.format("app.gl"),
        gitlab_push("refs/tags/v1.4.0", tag=True),
        gitlab_headers(event="Tag Push Hook"),
    )
    assert (push.status_code, tag.status_code) == (202, 202)
    assert [(r.project, r.env, r.version) for r in webhook_runs(engine)] == [
        ("app", "dev", SHA),
        ("app", "dev", "v1.4.0"),
    ]
    newest, oldest = records(app, "app.gl")
    assert oldest.committer == "Jordi <jordi@example.org>"
    assert (newest.kind, newest.tag) == ("tag", "v1.4.0")


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        (gitlab_headers(token="wrong"), "X-Gitlab-Token"),
        ({k: v for k, v in gitlab_headers().items() if k != "X-Gitlab-Token"}, "X-Gitlab-Token"),
    ],
    ids=["wrong-token", "missing-token"],
)
async def test_gitlab_bad_token(
    server: LiveServer, app: Starlette, engine: Reconciler, headers: dict[str, str], field: str
) -> None:
    answer = await post(server, HOOK.format("app.gl"), gitlab_push(), headers)
    assert answer.status_code == 401 and answer.json()["error"]["field"] == field
    assert webhook_runs(engine) == []
    assert only_record(app, "app.gl").status == "failed"


async def test_gitlab_replay_by_idempotency_key(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    headers = gitlab_headers(key="gl-key-1")
    await post(server, HOOK.format("app.gl"), gitlab_push(), headers)
    again = await post(server, HOOK.format("app.gl"), gitlab_push(), headers)
    assert again.json()["status"] == "skipped"
    assert len(webhook_runs(engine)) == 1


async def test_provider_mismatch_is_refused(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    body = github_push()
    answer = await post(server, HOOK.format("app.gl"), body, github_headers(body))
    assert answer.status_code == 401 and answer.json()["error"]["field"] == "X-Gitlab-Token"
    assert webhook_runs(engine) == []


# -- Gitee -------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [False, True], ids=["signature", "password"])
async def test_gitee_push(
    server: LiveServer, app: Starlette, engine: Reconciler, password: bool
) -> None:
    answer = await post(
        server, HOOK.format("app.ge"), gitee_push(), gitee_headers(password=password)
    )
    assert answer.status_code == 202, answer.text
    (run,) = webhook_runs(engine)
    assert (run.project, run.env, run.version) == ("app", "dev", SHA)
    assert only_record(app, "app.ge").committer == "红薯 <git@oschina.cn>"


async def test_gitee_stale_timestamp_is_refused(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    stale = int(time.time() * 1000) - 10 * 60 * 1000
    answer = await post(server, HOOK.format("app.ge"), gitee_push(), gitee_headers(stale))
    assert answer.status_code == 401
    assert answer.json()["error"]["field"] == "X-Gitee-Timestamp"
    assert webhook_runs(engine) == []
    record = only_record(app, "app.ge")
    assert record.status == "failed" and "away from now" in record.reason


async def test_gitee_wrong_token_and_exact_replay(
    server: LiveServer, app: Starlette, engine: Reconciler
) -> None:
    wrong = await post(server, HOOK.format("app.ge"), gitee_push(), gitee_headers(secret="nope"))
    assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "X-Gitee-Token"
    headers = gitee_headers()
    first = await post(server, HOOK.format("app.ge"), gitee_push(), headers)
    replay = await post(server, HOOK.format("app.ge"), gitee_push(), headers)
    assert (first.status_code, replay.status_code) == (202, 200)
    assert len(webhook_runs(engine)) == 1
    assert [r.status for r in records(app, "app.ge")] == ["skipped", "success", "failed"]


# -- the config repo's own webhook ---------------------------------------------------------


async def test_config_webhook_reconciles_on_the_desired_branch_only(
    server: LiveServer,
    app: Starlette,
    engine: Reconciler,
    api_repo: ConfigRepo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine's own loop runs (60 s poll): only a signed push to main makes it pass early."""
    caplog.set_level(logging.INFO)
    dev = "projects/app/environments/dev.yaml"

    def dev_runs_of(version: str) -> list[Run]:
        return [r for r in engine.runs.list("app", "dev")[0] if r.version == version]

    stop = asyncio.Event()
    loop = asyncio.create_task(engine.run_forever(stop))
    try:
        await driving.until(lambda: dev_runs_of("1.0.0") != [], "the first pass")
        await engine.wait_idle()
        api_repo.commit({dev: api_repo.read(dev).replace("1.0.0", "1.0.1")})
        main = github_push()
        other = github_push("refs/heads/experiment")
        url = "/api/release/webhooks/config"
        assert (
            await post(server, url, main, github_headers(main, secret=CONFIG_HOOK_SECRET))
        ).status_code == 202
        await driving.until(lambda: dev_runs_of("1.0.1") != [], "a pass after the push")
        await engine.wait_idle()
        api_repo.commit({dev: api_repo.read(dev).replace("1.0.1", "1.0.2")})
        assert (
            await post(server, url, other, github_headers(other, secret=CONFIG_HOOK_SECRET))
        ).status_code == 200
        bad = await post(server, url, main, github_headers(main))  # signed with a project's secret
        assert bad.status_code == 401
        await asyncio.sleep(0.3)
        assert dev_runs_of("1.0.2") == []  # neither woke the loop
    finally:
        stop.set()
        await loop
    (release,) = dev_runs_of("1.0.1")
    assert release.trigger is Trigger.POLL and release.state is RunState.SUCCEEDED
    assert [r.status for r in records(app, "config")] == ["failed", "skipped", "success"]
    (requested,) = [m for m in caplog.messages if m.startswith("reconcile requested")]
    assert "refs/heads/main" in requested


async def test_trigger_records_are_listed_per_project_member(
    server: LiveServer, app: Starlette, engine: Reconciler, tokens: dict[str, str]
) -> None:
    body = github_push()
    await post(server, HOOK.format("app.gh"), body, github_headers(body))
    async with server.client(tokens["vic"]) as viewer, server.client(tokens["nora"]) as outsider:
        seen = (
            await viewer.get("/api/release/triggers/records", params={"trigger": "app.gh"})
        ).json()
        hidden = await outsider.get("/api/release/triggers/records", params={"project": "app"})
        none = (await outsider.get("/api/release/triggers/records")).json()
    assert seen["total"] == 1 and seen["items"][0]["commit"] == SHA
    assert hidden.status_code == 404
    assert none["total"] == 0
