"""Table tests of the planner: cases in tests/cases/planning/, each also checked for idempotence."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from reconciler.gitops import model, planning

CASES = sorted((Path(__file__).parents[1] / "cases" / "planning").glob("*.yaml"))


def _env(spec: dict[str, Any]) -> model.Environment:
    return model.Environment(
        project=spec["project"],
        name=spec["env"],
        version=spec["version"],
        tier="dev",
        protected=spec.get("protected", False),
        strategy=model.Strategy(),
        deploy=model.DeployConfig(model.DeployType.SCRIPT),
        build=model.BuildConfig(),
        pipeline=model.Pipeline(()),
        targets=(model.Target(local="t1"),),
        config_hash=spec.get("config_hash", "h"),
    )


def _desired(specs: list[dict[str, Any]]) -> model.DesiredState:
    projects: dict[str, dict[str, model.Environment]] = {}
    for spec in specs:
        projects.setdefault(spec["project"], {})[spec["env"]] = _env(spec)
    return model.DesiredState(
        commit="c0ffee",
        settings=model.Settings(),
        users=MappingProxyType({}),
        projects={
            name: model.Project(name, (), MappingProxyType(envs)) for name, envs in projects.items()
        },
    )


def _record(spec: dict[str, Any]) -> planning.DeployedRecord:
    failure = spec.get("last_failure")
    pin = spec.get("pin")
    return planning.DeployedRecord(
        project=spec["project"],
        env=spec["env"],
        version=spec.get("version"),
        config_hash=spec.get("config_hash", "h"),
        image_digest=spec.get("image_digest"),
        run_id=spec.get("run_id", ""),
        last_failure=planning.Attempt(**failure) if failure else None,
        pin=planning.Pin(**pin) if pin else None,
    )


def _apply(
    plan: planning.Plan,
    deployed: dict[tuple[str, str], planning.DeployedRecord],
    desired: model.DesiredState,
) -> dict[tuple[str, str], planning.DeployedRecord]:
    """What a successful run of every deploy action records (and targets then report)."""
    after = dict(deployed)
    for action in plan.changes:
        env = desired.environment(action.project, action.env)
        assert env is not None
        after[(action.project, action.env)] = planning.DeployedRecord(
            action.project, action.env, env.version, env.config_hash
        )
    return after


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_planning_case(case: Path) -> None:
    spec = yaml.safe_load(case.read_text())
    desired = _desired(spec["desired"])
    deployed = {(r["project"], r["env"]): _record(r) for r in spec.get("deployed", [])}
    observations = [planning.Observation(**o) for o in spec.get("observations", [])]
    plan = planning.plan(desired, deployed, observations)

    got = [(a.key, a.kind.value, a.reason.value) for a in plan.actions]
    want = [(e["key"], e["action"], e["reason"]) for e in spec["expect"]]
    assert got == want, spec["description"]
    for action, expected in zip(plan.actions, spec["expect"], strict=True):
        if "from" in expected:
            assert action.from_version == expected["from"]
        if "to" in expected:
            assert action.to_version == expected["to"]
        if "detail_contains" in expected:
            assert expected["detail_contains"] in action.detail
        if "pin" in expected:
            assert action.as_dict()["pin"] == expected["pin"]

    if spec.get("idempotent", True):
        # After applying, targets run what was deployed: no drift, nothing to do.
        after = _apply(plan, deployed, desired)
        healed = [
            o
            for o in observations
            if (o.project, o.env) not in {(a.project, a.env) for a in plan.changes}
        ]
        again = planning.plan(desired, after, healed)
        assert not again.has_changes, [a.as_dict() for a in again.changes]


def test_plan_is_deterministic() -> None:
    specs = [{"project": p, "env": e, "version": "1"} for p in ("b", "a", "c") for e in ("z", "y")]
    one = planning.plan(_desired(specs), {})
    two = planning.plan(_desired(list(reversed(specs))), {})
    assert one == two
    assert [a.key for a in one.actions] == sorted(a.key for a in one.actions)
    assert one.counts == {"deploy": 6}


def test_only_restricts_to_project_and_env() -> None:
    specs = [{"project": p, "env": e, "version": "1"} for p in ("a", "b") for e in ("dev", "prod")]
    plan = planning.plan(_desired(specs), {})
    assert [a.key for a in plan.only("a").actions] == ["a/dev", "a/prod"]
    assert [a.key for a in plan.only("b", "prod").actions] == ["b/prod"]
    assert plan.only("b", "prod").counts == {"deploy": 1}


def test_a_reused_planner_gives_the_same_plan_as_a_fresh_one() -> None:
    specs = [{"project": "a", "env": e, "version": "1"} for e in ("dev", "prod")]
    desired = _desired(specs)
    deployed = {("a", "dev"): planning.DeployedRecord("a", "dev", "1", "h")}
    planner = planning.Planner()
    first = planner.plan(desired, deployed)
    assert first == planning.plan(desired, deployed)
    # The same objects again: judged from the memo, same answer.
    assert planner.plan(desired, deployed) == first
    # prod gets deployed: a new record object for it, the dev pair is reused.
    after = {**deployed, ("a", "prod"): planning.DeployedRecord("a", "prod", "1", "h")}
    again = planner.plan(desired, after)
    assert again == planning.plan(desired, after)
    assert not again.has_changes
    # A new desired state with prod at version 2.
    bumped = _desired([specs[0], {**specs[1], "version": "2"}])
    assert planner.plan(bumped, after) == planning.plan(bumped, after)
    assert [a.key for a in planner.plan(bumped, after).changes] == ["a/prod"]
