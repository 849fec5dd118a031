"""The notifier end to end: events from the bus → callbacks and alerts → real receivers.

Covers callbacks chosen by event type (global and project), masking, alert rules with
folding and digests, Feishu through the credential manager, the alert API views, and a
restart in the middle of retries that resumes the outbox without duplicates.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from alert.receivers import (
    LEAKY_TOKEN,
    FakeClock,
    Receiver,
    SleepRecorder,
    callback,
    desired_state,
)
from gitrepos import ConfigRepo

from reconciler.alert.notifier import Notifier
from reconciler.credential.manager import CredentialManager
from reconciler.engine.bus import EventBus
from reconciler.events import Event, EventType
from reconciler.gitops.model import AlertRule
from reconciler.notifications import AttemptStatus, State
from reconciler.store.sqlite import SQLiteDatabase as Database


def _event(
    kind: EventType,
    *,
    project: str = "shop",
    env: str = "prod",
    version: str = "1.4.2",
    run: str = "run-1",
    at: str = "2026-11-29T10:00:00Z",
    error: str = "",
) -> Event:
    return Event(
        kind,
        at,
        run_id=run,
        project=project,
        env=env,
        version=version,
        error=error,
        data={"trigger": "webhook", "committer": "alice"},
    )


async def _wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_callbacks_listening_to_the_event_type_get_it_global_and_own_project_only(
    receiver: Receiver, database: Database, credentials: CredentialManager
) -> None:
    url = receiver.url("/webhook")
    desired = desired_state(
        callbacks=(
            callback("audit", url, events=("run_failed", "run_succeeded"), secret="hook-key"),
            callback("quiet", url, events=("run_started",), secret="hook-key"),
            callback("off", url, events=("run_failed",), secret="hook-key", enabled=False),
        ),
        projects={
            "shop": (
                (
                    callback(
                        "shop-oncall",
                        url,
                        events=("run_failed",),
                        secret="hook-key",
                        project="shop",
                    ),
                ),
                (),
            ),
            "billing": (
                (
                    callback(
                        "billing-oncall",
                        url,
                        events=("run_failed",),
                        secret="hook-key",
                        project="billing",
                    ),
                ),
                (),
            ),
        },
    )
    bus = EventBus()
    notifier = Notifier(database, credentials=credentials, sleep=SleepRecorder())
    notifier.update(desired)
    await notifier.start(bus)
    try:
        bus.publish(_event(EventType.RUN_FAILED, error=f"push refused for token {LEAKY_TOKEN}"))
        await bus.drain()
        await notifier.drain()
    finally:
        await notifier.close()
        await bus.close()
    assert receiver.bad_signatures == 0
    assert len(receiver.accepted) == 2 and receiver.duplicates == 0
    bodies = list(receiver.bodies.values())
    assert {b["kind"] for b in bodies} == {"event"}
    assert all(b["schema"] == "quicflow.notification/v1" for b in bodies)
    assert all(b["event"] == "run_failed" and b["project"] == "shop" for b in bodies)
    assert bodies[0]["run"]["url"] == "https://quicflow.example.com/runs/run-1"
    # The project's deploy token in the error text never leaves the reconciler.
    for request in receiver.requests:
        assert LEAKY_TOKEN.encode() not in request["raw"]
    assert "push refused for token ***" in bodies[0]["error"]
    assert {d.callback for d in notifier.deliveries()} == {"audit", "shop-oncall"}
    assert all(d.status is AttemptStatus.DELIVERED for d in notifier.deliveries())
    # The secret was fetched from the credential manager, and that use was audited.
    assert credentials.logs("global:hook-key")


async def test_a_restart_in_the_middle_resumes_the_outbox_without_duplicates(
    receiver: Receiver, tmp_path: Path, credentials: CredentialManager
) -> None:
    receiver.fail_first = 2
    desired = desired_state(
        callbacks=(
            callback(
                "audit",
                receiver.url("/webhook"),
                events=("run_failed",),
                secret="hook-key",
                attempts=5,
            ),
        )
    )
    events = [_event(EventType.RUN_FAILED, run=f"run-{i}", version=f"1.0.{i}") for i in range(3)]
    path = tmp_path / "store" / "quicflow.db"

    async def never(_delay: float) -> None:
        await asyncio.Event().wait()  # the process "stops" while waiting to retry

    first_db = Database(path)
    first = Notifier(first_db, credentials=credentials, sleep=never)
    first.update(desired)
    await first.start()
    try:
        for event in events:
            await first.handle(event)
        await _wait_for(lambda: len(first.deliveries()) == 3)
    finally:
        await first.close()
        first_db.close()
    assert receiver.accepted == {}
    assert sum(receiver.attempts.values()) == 3

    second_db = Database(path)
    second = Notifier(second_db, credentials=credentials, sleep=SleepRecorder())
    second.update(desired)
    try:
        pending = second.pending()
        assert len(pending) == 3 and all(i.attempts == 1 for i in pending)
        await second.start()
        await second.drain(within=5.0)
        # The engine publishing the same events again after its own restart changes nothing.
        for event in events:
            await second.handle(event)
        await second.drain()
        keys = [i.key for i in second.outbox.items()]
        assert len(keys) == 3
        assert [(i.state, i.attempts, i.last_error) for i in second.outbox.items()] == [
            (State.DELIVERED, 3, "")
        ] * 3
        for key in keys:
            history = [(d.attempt, d.status) for d in reversed(second.deliveries(key=key))]
            assert history == [
                (1, AttemptStatus.FAILED),
                (2, AttemptStatus.FAILED),
                (3, AttemptStatus.DELIVERED),
            ]
    finally:
        await second.close()
        second_db.close()
    assert receiver.accepted == {key: 1 for key in keys}
    assert receiver.duplicates == 0
    assert sum(receiver.attempts.values()) == 9


async def _rule_notifier(
    rule: AlertRule, receiver: Receiver, database: Database, clock: FakeClock
) -> Notifier:
    """A started notifier whose only callback is ``ops`` (unsigned) and only rule ``rule``."""
    desired = desired_state(
        callbacks=(callback("ops", receiver.url("/unsigned")),), alert_rules=(rule,)
    )
    notifier = Notifier(database, clock=clock, sleep=SleepRecorder())
    notifier.update(desired)
    await notifier.start()
    return notifier


async def test_twenty_build_failures_in_a_window_make_one_digest_with_twenty_entries(
    receiver: Receiver, database: Database
) -> None:
    clock = FakeClock()
    rule = AlertRule(
        name="build-failed-digest",
        event="build_failed",
        callbacks=("ops",),
        severity="warning",
        mode="digest",
        window=600.0,
    )
    notifier = await _rule_notifier(rule, receiver, database, clock)
    try:
        for i in range(20):
            clock.advance(10)
            await notifier.handle(
                _event(
                    EventType.BUILD_FAILED,
                    env="",
                    version=f"2.0.{i}",
                    run="",
                    at=f"t{i}",
                    error=f"step {i} failed",
                )
            )
        assert await notifier.flush_digests() == 0
        await notifier.drain()
        assert receiver.requests == []
        records = notifier.history(limit=100)
        assert len(records) == 20 and not any(r.notified for r in records)
        clock.advance(600)
        assert await notifier.flush_digests() == 1
        await notifier.drain()
        assert await notifier.flush_digests() == 0
        await notifier.drain()
        assert all(r.notified for r in notifier.history(limit=100))
    finally:
        await notifier.close()
    assert len(receiver.requests) == 1
    (body,) = receiver.bodies.values()
    assert body["kind"] == "digest"
    assert body["severity"] == "warning"
    assert body["alert"]["rule"] == "build-failed-digest" and body["alert"]["count"] == 20
    assert [e["version"] for e in body["entries"]] == [f"2.0.{i}" for i in range(20)]
    lines = body["text"].splitlines()
    assert lines[0] == "[WARNING] build failed digest: 20 alerts"
    assert len([line for line in lines if line.split(".")[0].isdigit()]) == 20


async def test_the_same_failure_five_times_in_a_window_is_one_alert_with_count_five(
    receiver: Receiver, database: Database
) -> None:
    clock = FakeClock()
    rule = AlertRule(
        name="prod-deploy-failed",
        event="deploy_failed",
        callbacks=("ops",),
        environment="prod",
        severity="critical",
        window=600.0,
    )
    notifier = await _rule_notifier(rule, receiver, database, clock)
    try:
        for i in range(5):
            clock.advance(30)
            await notifier.handle(
                _event(EventType.RUN_FAILED, run=f"run-{i}", at=f"t{i}", error=f"attempt {i}")
            )
        # Both events of one run (its deploy step, then the run) are one occurrence.
        await notifier.handle(_event(EventType.DEPLOY_FAILED, run="run-4", at="t4b"))
        # Staging is not prod: no alert.
        await notifier.handle(_event(EventType.RUN_FAILED, env="staging", run="run-s"))
        await notifier.drain()
        (alert,) = notifier.history()
        assert alert.count == 5 and alert.notified
        assert alert.severity == "critical" and alert.rule == "prod-deploy-failed"
        assert alert.title == "deploy failed: shop/prod 1.4.2"
        assert alert.error == "attempt 4"
        assert len(receiver.requests) == 1
        (body,) = receiver.bodies.values()
        assert body["kind"] == "alert" and body["alert"]["id"] == alert.id
        assert body["text"].startswith("[CRITICAL] deploy failed: shop/prod 1.4.2")
        # After the window, the next failure is a new alert, notified again.
        clock.advance(600)
        await notifier.handle(_event(EventType.RUN_FAILED, run="run-9", at="t9"))
        await notifier.drain()
        assert [a.count for a in notifier.history()] == [1, 5]
        assert len(receiver.requests) == 2
        view = notifier.history()[1].as_dict()
        assert {
            "rule",
            "severity",
            "title",
            "message",
            "run",
            "notified",
            "created",
            "count",
        } <= set(view)
    finally:
        await notifier.close()


async def test_rules_match_environments_by_tier(receiver: Receiver, database: Database) -> None:
    rule = AlertRule(
        name="prod-canary", event="canary_failed", callbacks=("ops",), environment="prod"
    )
    desired = desired_state(
        callbacks=(callback("ops", receiver.url("/unsigned")),), alert_rules=(rule,)
    )
    # The desired state comes from a source (as the engine's ``desired`` property).
    notifier = Notifier(database, desired=lambda: desired, sleep=SleepRecorder())
    await notifier.start()
    try:
        await notifier.handle(_event(EventType.CANARY_FAILED, env="live", run="a"))  # tier prod
        await notifier.handle(_event(EventType.CANARY_FAILED, env="dev", run="b"))
        await notifier.drain()
    finally:
        await notifier.close()
    assert [(a.env, a.count) for a in notifier.history()] == [("live", 1)]


async def test_feishu_callback_is_signed_with_its_credential_and_uses_its_template(
    receiver: Receiver, database: Database, credentials: CredentialManager
) -> None:
    template = "[{{ severity | default('info') | upper }}] {{ project }}/{{ env }} {{ version }}: {{ status }}\n{{ links.run }}"
    rule = AlertRule(
        name="rollback",
        event="rolled_back",
        callbacks=("ops-feishu",),
        severity="warning",
        project="shop",
    )
    feishu = callback(
        "ops-feishu",
        receiver.url("/feishu"),
        type="feishu",
        format="interactive",
        secret="feishu-bot",
        template=template,
        events=("approval_requested",),
    )
    desired = desired_state(callbacks=(feishu,), projects={"shop": ((), (rule,))})
    notifier = Notifier(database, credentials=credentials, sleep=SleepRecorder())
    notifier.update(desired)
    await notifier.start()
    try:
        await notifier.handle(_event(EventType.ROLLED_BACK))
        await notifier.handle(_event(EventType.APPROVAL_REQUESTED, run="run-2"))
        await notifier.drain()
    finally:
        await notifier.close()
    assert receiver.bad_signatures == 0
    assert len(receiver.accepted) == 2
    cards = [b["card"] for b in receiver.bodies.values()]
    assert all(b["msg_type"] == "interactive" for b in receiver.bodies.values())
    texts = sorted(c["elements"][0]["text"]["content"] for c in cards)
    assert texts == [
        "[INFO] shop/prod 1.4.2: waiting for approval\nhttps://quicflow.example.com/runs/run-2",
        "[WARNING] shop/prod 1.4.2: rolled back\nhttps://quicflow.example.com/runs/run-1",
    ]
    assert {c["header"]["template"] for c in cards} == {"orange", "turquoise"}
    assert notifier.history()[0].rule == "shop/rollback"
    assert credentials.logs("global:feishu-bot")


async def test_a_refused_template_still_notifies_with_the_default_text(
    receiver: Receiver, database: Database
) -> None:
    bad = callback(
        "ops",
        receiver.url("/unsigned"),
        events=("run_failed",),
        template="{{ ''.__class__.__mro__ }}",
    )
    notifier = Notifier(database, sleep=SleepRecorder())
    notifier.update(desired_state(callbacks=(bad,)))
    await notifier.start()
    try:
        await notifier.handle(_event(EventType.RUN_FAILED))
        await notifier.drain()
    finally:
        await notifier.close()
    (body,) = receiver.bodies.values()
    assert body["text"].startswith("shop/prod 1.4.2: failed")
    assert "template of callback ops refused" in body["text"]
    assert "class 'object'" not in json.dumps(body)


async def test_events_before_a_desired_state_and_without_listeners_send_nothing(
    receiver: Receiver, database: Database
) -> None:
    notifier = Notifier(database, sleep=SleepRecorder())
    await notifier.start()
    try:
        await notifier.handle(_event(EventType.RUN_FAILED))
        notifier.update(
            desired_state(
                callbacks=(callback("ops", receiver.url("/unsigned"), events=("run_started",)),)
            )
        )
        await notifier.handle(_event(EventType.RUN_FAILED))
        await notifier.drain()
    finally:
        await notifier.close()
    assert receiver.requests == [] and notifier.history() == []


def test_list_rules_shows_the_example_repos_rules(
    example_repo: ConfigRepo, database: Database
) -> None:
    from reconciler.gitops.loading import Loader
    from reconciler.gitops.repository import GitRepository

    desired = Loader(GitRepository.open(example_repo.path)).load().raise_for_problems()
    notifier = Notifier(database)
    listed = {r["id"]: r for r in notifier.list_rules(desired)}
    assert set(listed) == {
        "prod-deploy-failed",
        "canary-failed",
        "build-failed-digest",
        "deploy-timeout",
        "billing/billing-rollback",
    }
    assert listed["prod-deploy-failed"] | {} == {
        "id": "prod-deploy-failed",
        "name": "prod-deploy-failed",
        "project": None,
        "event": "deploy_failed",
        "matches": ["deploy_failed", "run_failed"],
        "environment": "prod",
        "severity": "critical",
        "mode": "immediate",
        "window": 600.0,
        "enabled": True,
        "callbacks": ["ops-feishu"],
    }
    assert listed["build-failed-digest"]["mode"] == "digest"
    assert listed["deploy-timeout"]["matches"] == ["deploy_timeout", "task_timed_out"]
    assert listed["billing/billing-rollback"]["project"] == "billing"
    assert notifier.list_rules() == []  # no desired state in force yet


async def test_the_digest_timer_sends_a_closed_window_without_being_asked(
    receiver: Receiver, database: Database
) -> None:
    rule = AlertRule(
        name="builds", event="build_failed", callbacks=("ops",), mode="digest", window=0.2
    )
    desired = desired_state(
        callbacks=(callback("ops", receiver.url("/unsigned")),), alert_rules=(rule,)
    )
    bus = EventBus()
    notifier = Notifier(database, sleep=SleepRecorder(), digest_tick=0.05, idle_wait=0.05)
    notifier.update(desired)
    await notifier.start(bus)
    try:
        for i in range(3):
            bus.publish(_event(EventType.BUILD_FAILED, env="", version=f"3.0.{i}", run=""))
        await bus.drain()
        await _wait_for(lambda: len(receiver.accepted) == 1)
    finally:
        await notifier.close()
        await bus.close()
    (body,) = receiver.bodies.values()
    assert len(body["entries"]) == 3
