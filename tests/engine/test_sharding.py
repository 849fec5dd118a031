"""Assigning project/environments to replicas: stable, balanced, and handed over safely."""

from __future__ import annotations

from collections import Counter

from reconciler.engine.sharding import assign, owners
from reconciler.store.leases import Lease

KEYS = [f"p{i}/e{j}" for i in range(20) for j in range(3)]  # 60 project/environments


def owner_of(key: str, replicas: list[str]) -> str:
    return owners(KEYS, replicas)[key]


def test_sixty_environments_spread_evenly_over_three_replicas() -> None:
    counts = Counter(owners(KEYS, ["a", "b", "c"]).values())
    assert counts == {"a": 20, "b": 20, "c": 20}
    assert owners(KEYS, ["c", "a", "b"]) == owners(KEYS, ["a", "b", "c"])  # same everywhere


def test_a_replica_that_leaves_moves_little_more_than_its_share() -> None:
    before = owners(KEYS, ["a", "b", "c"])
    after = owners(KEYS, ["a", "b"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert {k for k in KEYS if before[k] == "c"} <= moved
    assert len(moved) <= 30, len(moved)  # c's 20, and at most 10 rebalanced
    assert Counter(after.values()) == {"a": 30, "b": 30}


def test_free_keys_are_taken_by_their_replica_only() -> None:
    plan = assign(KEYS, "a", ["a", "b", "c"], {}, now=0.0)
    assert plan.take == {k for k in KEYS if owner_of(k, ["a", "b", "c"]) == "a"}
    assert not plan.keep and not plan.release


def test_an_expired_lease_of_a_dead_replica_is_taken_over() -> None:
    key = next(
        k for k in KEYS if owner_of(k, ["a", "c"]) == "a" and owner_of(k, ["a", "b", "c"]) == "b"
    )
    leases = {key: Lease(key, "b", 3, expires_at=100.0)}
    assert key not in assign(KEYS, "a", ["a", "c"], leases, now=99.0).take  # not expired yet
    assert key in assign(KEYS, "a", ["a", "c"], leases, now=100.5).take


def test_a_key_that_now_belongs_elsewhere_is_handed_over_only_when_idle() -> None:
    key = next(k for k in KEYS if owner_of(k, ["a", "b"]) == "b")
    leases = {key: Lease(key, "a", 1, expires_at=50.0)}  # a held it while b was away
    assert assign(KEYS, "a", ["a", "b"], leases, now=10.0).release == {key}
    busy = assign(KEYS, "a", ["a", "b"], leases, now=10.0, busy={key})
    assert key in busy.keep and not busy.release  # a run of it executes on a


def test_a_key_gone_from_the_config_is_let_go() -> None:
    leases = {"old/prod": Lease("old/prod", "a", 1, expires_at=50.0)}
    assert assign(KEYS, "a", ["a"], leases, now=10.0).release == {"old/prod"}
