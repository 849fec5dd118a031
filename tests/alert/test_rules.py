"""Alert rules: matching events and environments, folding repeats, digest windows."""

from __future__ import annotations

import pytest

from reconciler import notifications
from reconciler.alert import rules
from reconciler.events import Event, EventType
from reconciler.gitops.model import AlertRule


def _rule(event: str, environment: str = "all", **kw: object) -> AlertRule:
    return AlertRule(
        name=kw.pop("name", f"r-{event}"),
        event=event,
        callbacks=("cb",),
        environment=environment,
        **kw,
    )  # type: ignore[arg-type]


def _event(kind: EventType, env: str = "prod", project: str = "shop", run: str = "r1") -> Event:
    return Event(kind, "2026-11-29T10:00:00Z", run_id=run, project=project, env=env, version="1.0")


@pytest.mark.parametrize(
    ("rule_event", "event_type", "matches"),
    [
        ("deploy_failed", EventType.RUN_FAILED, True),
        ("deploy_failed", EventType.DEPLOY_FAILED, True),
        ("deploy_failed", EventType.TASK_FAILED, False),
        ("deploy_failed", EventType.RUN_SUCCEEDED, False),
        ("canary_failed", EventType.CANARY_FAILED, True),
        ("canary_failed", EventType.RUN_FAILED, False),
        ("build_failed", EventType.BUILD_FAILED, True),
        ("build_failed", EventType.BUILD_SUCCEEDED, False),
        ("timeout", EventType.TASK_TIMED_OUT, True),
        ("timeout", EventType.DEPLOY_TIMEOUT, True),
        ("timeout", EventType.TASK_FAILED, False),
        ("rolled_back", EventType.ROLLED_BACK, True),
        ("approval_requested", EventType.APPROVAL_REQUESTED, True),
        ("approval_requested", EventType.APPROVED, False),
    ],
)
def test_rule_events_map_to_engine_events(
    rule_event: str, event_type: EventType, matches: bool
) -> None:
    found = rules.matching_rules([_rule(rule_event)], _event(event_type))
    assert bool(found) is matches


@pytest.mark.parametrize(
    ("selector", "env", "tier", "matches"),
    [
        ("all", "prod", "prod", True),
        ("all", "", "", True),
        ("prod", "prod", "prod", True),
        ("prod", "live", "prod", True),  # by tier
        ("prod", "staging", "staging", False),
        ("staging", "staging", "staging", True),
        ("eu-west", "eu-west", "prod", True),  # by name
        ("prod", "", "", False),  # a build outside any environment
    ],
)
def test_environment_matches_by_name_tier_or_all(
    selector: str, env: str, tier: str, matches: bool
) -> None:
    assert rules.environment_matches(selector, env, tier) is matches


def test_disabled_rules_and_other_projects_rules_do_not_match() -> None:
    event = _event(EventType.RUN_FAILED)
    assert not rules.matching_rules([_rule("deploy_failed", enabled=False)], event)
    assert not rules.matching_rules([_rule("deploy_failed", project="billing")], event)
    assert rules.matching_rules([_rule("deploy_failed", project="shop")], event)
    assert not rules.matching_rules([_rule("deploy_failed", "staging")], event, "prod")


def test_rule_id_is_prefixed_by_its_project() -> None:
    assert rules.rule_id(_rule("build_failed", name="x")) == "x"
    assert rules.rule_id(_rule("build_failed", name="x", project="shop")) == "shop/x"
    assert rules.window_of(_rule("build_failed")) == rules.DEFAULT_WINDOW
    assert rules.window_of(_rule("build_failed", window=60.0)) == 60.0


def test_five_repeats_inside_the_window_fold_into_one_with_count_five() -> None:
    fold, outcome = rules.fold(None, "r1", 1000.0, 600.0)
    assert outcome is rules.FoldOutcome.NEW
    for i in range(2, 6):
        fold, outcome = rules.fold(fold, f"r{i}", 1000.0 + i * 10, 600.0)
        assert outcome is rules.FoldOutcome.REPEAT
    assert fold == notifications.Fold(1000.0, 5, frozenset({"r1", "r2", "r3", "r4", "r5"}))


def test_two_events_of_one_run_count_once() -> None:
    fold, _ = rules.fold(None, "r1", 0.0, 600.0)
    again, outcome = rules.fold(fold, "r1", 5.0, 600.0)
    assert outcome is rules.FoldOutcome.SAME_RUN
    assert again.count == 1


def test_a_repeat_after_the_window_opens_a_new_alert() -> None:
    fold, _ = rules.fold(None, "r1", 0.0, 600.0)
    fold, _ = rules.fold(fold, "r2", 599.0, 600.0)
    fresh, outcome = rules.fold(fold, "r3", 600.0, 600.0)
    assert outcome is rules.FoldOutcome.NEW
    assert fresh == notifications.Fold(600.0, 1, frozenset({"r3"}))


def test_twenty_waiting_alerts_make_one_digest_when_the_window_closes() -> None:
    waiting = [notifications.Waiting(i, "build-failed-digest", 1000.0 + i) for i in range(1, 21)]
    windows = {"build-failed-digest": 600.0}
    assert rules.due_digests(waiting, windows, 1599.0) == ()
    assert rules.next_digest_at(waiting, windows) == 1601.0
    (digest,) = rules.due_digests(waiting, windows, 1601.0)
    assert digest == rules.Digest("build-failed-digest", 1001.0, 1601.0, tuple(range(1, 21)))


def test_alerts_after_the_window_closed_wait_for_the_next_digest() -> None:
    waiting = [
        notifications.Waiting(1, "d", 0.0),
        notifications.Waiting(2, "d", 50.0),
        notifications.Waiting(3, "d", 70.0),
        notifications.Waiting(4, "e", 0.0),
    ]
    due = rules.due_digests(waiting, {"d": 60.0, "e": 600.0}, 80.0)
    assert due == (rules.Digest("d", 0.0, 60.0, (1, 2)),)
