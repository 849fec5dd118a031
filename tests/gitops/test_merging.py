"""The three-level merge rule: project → environment → task; maps merge, lists replace."""

from __future__ import annotations

from reconciler.gitops import building, merging, model


def test_maps_merge_key_by_key_and_lower_level_wins() -> None:
    base = {"a": 1, "nested": {"x": 1, "y": 2}}
    override = {"nested": {"y": 3, "z": 4}, "b": 2}
    assert merging.merge(base, override) == {"a": 1, "b": 2, "nested": {"x": 1, "y": 3, "z": 4}}


def test_lists_and_scalars_replace_whole() -> None:
    assert merging.merge({"ports": ["1:1", "2:2"]}, {"ports": ["3:3"]}) == {"ports": ["3:3"]}
    assert merging.merge({"m": {"k": 1}}, {"m": "scalar"}) == {"m": "scalar"}
    assert merging.merge({"v": 1}, {"v": None}) == {"v": None}


def test_merge_does_not_mutate_inputs() -> None:
    base = {"n": {"a": 1}}
    merging.merge(base, {"n": {"b": 2}})
    assert base == {"n": {"a": 1}}


def test_merge_levels_applies_in_order() -> None:
    assert merging.merge_levels({"v": "project"}, {"v": "env"}, {"v": "task"}) == {"v": "task"}
    assert merging.merge_levels({"v": "project"}, None, {}) == {"v": "project"}


def test_stable_hash_ignores_key_order_and_sees_values() -> None:
    assert merging.stable_hash({"a": 1, "b": [1, 2]}) == merging.stable_hash({"b": [1, 2], "a": 1})
    assert merging.stable_hash({"a": 1}) != merging.stable_hash({"a": 2})
    assert merging.stable_hash({"l": [1, 2]}) != merging.stable_hash({"l": [2, 1]})


PROJECT = {
    "members": [{"user": "bob", "role": "owner"}],
    "variables": {
        "LEVEL": "project",
        "ONLY_PROJECT": "p",
        "DB": {"secret": "db", "field": "password"},
    },
    "deploy": {
        "type": "container",
        "container": {
            "image": "r/app:{{ version }}",
            "ports": ["80:80", "443:443"],
            "resources": {"cpus": 1, "memory": "256m"},
        },
    },
    "strategy": {"type": "canary", "canary": {"steps": [20, 100]}},
    "pipeline": {
        "stages": [
            {
                "name": "s",
                "tasks": [
                    {"name": "t", "run": "x", "variables": {"LEVEL": "task"}},
                    {
                        "name": "u",
                        "uses": "deploy",
                        "deploy": {"container": {"ports": ["8080:80"]}},
                    },
                ],
            }
        ]
    },
}
ENV = {
    "version": "1.0",
    "variables": {"LEVEL": "env", "ONLY_ENV": "e"},
    "overrides": {"deploy": {"container": {"resources": {"memory": "1g"}, "ports": ["81:80"]}}},
    "strategy": {"canary": {"pause": "1m"}},
    "targets": [{"agent": "web-1"}],
}


def _env() -> model.Environment:
    return building.environment("app", "prod", PROJECT, ENV, model.Source("x"))


def test_environment_variables_merge_over_project() -> None:
    env = _env()
    assert env.variables["LEVEL"] == "env"
    assert env.variables["ONLY_PROJECT"] == "p"
    assert env.variables["ONLY_ENV"] == "e"
    assert env.variables["DB"] == model.SecretRef("db", "password")


def test_environment_overrides_merge_maps_and_replace_lists() -> None:
    spec = _env().deploy.spec
    assert spec["image"] == "r/app:{{ version }}"  # untouched key kept
    assert dict(spec["resources"]) == {"cpus": 1, "memory": "1g"}  # map merged
    assert list(spec["ports"]) == ["81:80"]  # list replaced


def test_task_level_wins_over_environment() -> None:
    stage = _env().pipeline.stages[0]
    t, u = stage.tasks
    assert t.variables["LEVEL"] == "task"
    assert t.variables["ONLY_ENV"] == "e"  # inherited from the environment
    assert t.deploy is None
    assert u.variables["LEVEL"] == "env"
    assert u.deploy is not None
    assert list(u.deploy.spec["ports"]) == ["8080:80"]
    assert dict(u.deploy.spec["resources"]) == {"cpus": 1, "memory": "1g"}


def test_strategy_defaults_project_then_environment() -> None:
    strategy = _env().strategy
    assert strategy.type == model.StrategyType.CANARY
    assert list(strategy.params["steps"]) == [20, 100]
    assert strategy.params["pause"] == 60.0
    assert strategy.params["analysis"]["failure_threshold"] == 1  # built-in default


def test_config_hash_changes_with_effective_config_only() -> None:
    base = _env().config_hash
    changed_var = building.environment(
        "app", "prod", PROJECT, {**ENV, "variables": {"LEVEL": "x"}}, model.Source("x")
    )
    assert changed_var.config_hash != base
    new_version = building.environment(
        "app", "prod", PROJECT, {**ENV, "version": "2.0"}, model.Source("x")
    )
    assert new_version.config_hash == base  # the version is compared on its own
    new_strategy = building.environment(
        "app", "prod", PROJECT, {**ENV, "strategy": {"type": "rolling"}}, model.Source("x")
    )
    assert new_strategy.config_hash == base  # how to roll out is not what runs


def test_tier_and_protection_defaults() -> None:
    prod = building.environment("app", "production", PROJECT, {"version": "1"}, model.Source("x"))
    assert (prod.tier, prod.protected) == ("prod", True)
    dev = building.environment("app", "sandbox", PROJECT, {"version": "1"}, model.Source("x"))
    assert (dev.tier, dev.protected) == ("dev", False)
    explicit = building.environment(
        "app", "prod", PROJECT, {"version": "1", "protected": False}, model.Source("x")
    )
    assert explicit.protected is False
