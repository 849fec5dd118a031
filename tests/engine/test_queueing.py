"""The deploy queue's bookkeeping: one slot per environment, the newest request wins."""

from __future__ import annotations

from reconciler.engine import queueing
from reconciler.runs import Trigger


def _entry(env: str, version: str) -> queueing.Entry:
    request = queueing.QueuedDeploy("app", env, version, Trigger.WEBHOOK, "r-1", version)
    return queueing.Entry(request)


def test_a_newer_request_replaces_the_waiting_one_and_hands_it_back() -> None:
    queue = queueing.DeployQueue()
    first, second, other = _entry("dev", "1"), _entry("dev", "2"), _entry("prod", "1")
    assert queue.put(first) is None
    assert queue.put(other) is None  # another environment has a slot of its own
    assert queue.put(second) is first
    assert queue.get(("app", "dev")) == second.request
    assert queue.take(("app", "dev")) is second
    assert queue.take(("app", "dev")) is None and queue.get(("app", "dev")) is None


def test_drain_empties_every_slot() -> None:
    queue = queueing.DeployQueue()
    queue.put(_entry("dev", "1"))
    queue.put(_entry("prod", "1"))
    assert [e.request.env for e in queue.drain()] == ["dev", "prod"]
    assert queue.drain() == []
