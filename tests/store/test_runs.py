"""Runs, steps and decisions: listing with filters and totals, step positions, first decision wins."""

from __future__ import annotations

from reconciler.runs import Decision, Run, RunState, Step, StepStatus, Trigger
from reconciler.store import database, runs


def _run(run_id: str, env: str = "prod", state: RunState = RunState.PENDING) -> Run:
    return Run(run_id, "shop", env, "1.0", "c0ffee", "h", Trigger.MANUAL, state=state)


def test_runs_list_newest_first_with_filters_and_total(db: database.Database) -> None:
    store = runs.RunStore(db)
    store.create(_run("r-1", state=RunState.SUCCEEDED))
    store.create(_run("r-2", env="dev", state=RunState.RUNNING))
    store.create(_run("r-3", state=RunState.FAILED))
    found, total = store.list("shop", limit=2)
    assert [r.id for r in found] == ["r-3", "r-2"] and total == 3
    found, total = store.list(env="prod", states=[RunState.SUCCEEDED, RunState.FAILED], offset=1)
    assert [r.id for r in found] == ["r-1"] and total == 2
    assert store.list(project="", trigger="manual")[1] == 3  # '' means no filter
    assert [r.id for r in store.active()] == ["r-2"]
    latest = store.latest("shop", "prod")
    assert latest is not None and latest.id == "r-3"
    assert store.get("nope") is None


def test_a_step_keeps_its_first_position_and_a_gate_its_first_decision(
    db: database.Database,
) -> None:
    store = runs.RunStore(db)
    store.create(_run("r-1"))
    store.put_step(Step("r-1", "build", StepStatus.RUNNING))
    store.put_step(Step("r-1", "deploy", StepStatus.RUNNING))
    store.put_step(Step("r-1", "build", StepStatus.SUCCEEDED, attempts=2, result={"a": 1}))
    assert [(s.key, s.status) for s in store.steps("r-1")] == [
        ("build", StepStatus.SUCCEEDED),
        ("deploy", StepStatus.RUNNING),
    ]
    step = store.step("r-1", "build")
    assert step is not None and step.attempts == 2 and step.result == {"a": 1}
    assert store.decide(Decision("r-1", "prod", True, "alice", "t1", "go"))
    assert not store.decide(Decision("r-1", "prod", False, "bob", "t2"))
    decision = store.decision("r-1", "prod")
    assert decision == Decision("r-1", "prod", True, "alice", "t1", "go")
