"""Typed step keys and what an interrupted run hands over to the run that resumes it."""

from __future__ import annotations

import pytest

from reconciler.runs import Decision, Step, StepKey, StepKind, StepStatus, carried_over


@pytest.mark.parametrize(
    "text",
    [
        "stage:release",
        "task:release/deploy",
        "on:release/migrate/web-1",
        "approval:prod",
        "deploy:web-1",
        "deploy:web-1@green",
        "verify:web-2@blue",
        "batch:2",
        "analysis:1",
        "promote:1",
        "pause:batch-1",
        "switch",
        "rollback:web-1",
        "retire:web-1@blue",
    ],
)
def test_a_step_key_reads_back_as_the_text_it_is_stored_as(text: str) -> None:
    assert str(StepKey.parse(text)) == text


def test_step_keys_made_by_kind_are_the_keys_the_engine_stores() -> None:
    assert str(StepKey.deploy("web-1", "green")) == "deploy:web-1@green"
    assert str(StepKey.deploy("web-1")) == "deploy:web-1"
    assert str(StepKey.task("release", "deploy")) == "task:release/deploy"
    assert str(StepKey.numbered(StepKind.PAUSE, "batch-1")) == "pause:batch-1"
    assert StepKey.parse("retire:web-1@blue") == StepKey(StepKind.RETIRE, "web-1", "blue")


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="canary"):
        StepKey.parse("canary:34")


def _step(key: str, status: StepStatus = StepStatus.SUCCEEDED) -> Step:
    return Step("r-1", key, status, "2026-12-01T10:00:00Z")


def _keys(steps: list[Step]) -> list[str]:
    return [s.key for s in steps]


def test_finished_and_running_steps_carry_over_and_failed_ones_run_again() -> None:
    steps = [
        _step("stage:build"),
        _step("task:build/test"),
        _step("stage:release", StepStatus.RUNNING),
        _step("deploy:t1"),
        _step("verify:t1"),
        _step("batch:1"),
        _step("deploy:t2", StepStatus.RUNNING),
        _step("task:release/skip-me", StepStatus.SKIPPED),
        _step("task:release/broken", StepStatus.FAILED),
    ]
    kept, _ = carried_over(steps)
    # Running ones too: the new run re-issues their commands under the same names.
    assert _keys(kept) == [
        "stage:build",
        "task:build/test",
        "stage:release",
        "deploy:t1",
        "verify:t1",
        "batch:1",
        "deploy:t2",
        "task:release/skip-me",
    ]
    assert [s.status for s in kept if s.key == "deploy:t2"] == [StepStatus.RUNNING]


def test_a_pause_in_progress_carries_over_so_only_its_rest_is_waited_for() -> None:
    kept, _ = carried_over([_step("pause:batch-1", StepStatus.RUNNING)])
    assert _keys(kept) == ["pause:batch-1"] and kept[0].started_at == "2026-12-01T10:00:00Z"


@pytest.mark.parametrize(
    "undoing",
    [
        _step("rollback:t1"),
        _step("rollback:t1", StepStatus.RUNNING),  # started: it may have acted already
        _step("rollback:t2", StepStatus.FAILED),
        _step("retire:t1@green", StepStatus.RUNNING),
    ],
    ids=["rollback-done", "rollback-running", "rollback-failed", "retire-running"],
)
def test_a_rollout_that_began_to_be_undone_carries_nothing_of_itself(undoing: Step) -> None:
    steps = [
        _step("stage:build"),
        _step("task:build/test"),
        _step("deploy:t1@green"),
        _step("verify:t1@green"),
        _step("deploy:t1"),
        _step("verify:t1"),
        _step("batch:1"),
        _step("analysis:1"),
        _step("promote:1"),
        _step("pause:1"),
        _step("switch"),
        _step("deploy:t2", StepStatus.FAILED),
        undoing,
    ]
    decisions = [
        Decision("r-1", "approval:release", True, "carol", "2026-12-01T10:00:00Z"),
        Decision("r-1", "promote:1", True, "vic", "2026-12-01T10:01:00Z"),
    ]
    kept, gates = carried_over(steps, decisions)
    # Stages and tasks before the rollout still hold; nothing of the rollout does.
    assert _keys(kept) == ["stage:build", "task:build/test"]
    # The stage approval still holds; a promotion given to the undone rollout does not.
    assert [d.gate for d in gates] == ["approval:release"]


def test_decisions_carry_over_with_who_took_them() -> None:
    decision = Decision("r-1", "promote:1", True, "vic", "2026-12-01T10:01:00Z", "looks good")
    kept, gates = carried_over([_step("deploy:t1"), _step("analysis:1")], [decision])
    assert _keys(kept) == ["deploy:t1", "analysis:1"]
    assert gates == [decision]


def test_a_key_this_version_does_not_know_runs_again() -> None:
    kept, _ = carried_over([_step("canary:34"), _step("deploy:t1")])
    assert _keys(kept) == ["deploy:t1"]
