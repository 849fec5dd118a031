"""The reconcile loop (``run_forever``) against a real config repo and real local targets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from releasing import USERS, env_yaml, free_ports, make_repo, project_yaml, stop_servers

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

SLOW_POLL = USERS + "settings:\n  poll_interval: 1h\n"


async def _until(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_request_that_arrives_during_a_pass_starts_another_pass(tmp_path: Path) -> None:
    """A push that lands while a pass (and its run) is under way is released without waiting
    for the next poll (1 h): the wake-up is not cleared after the pass, and a run that ends
    makes the loop plan again."""
    repo = ConfigRepo(tmp_path / "config")
    ports = free_ports(1)
    make_repo(repo, SLOW_POLL, project_yaml("  type: rolling\n"), env_yaml("1.0", ports))
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    passes = 0
    real_pass = rec.reconcile_once

    async def pass_with_a_push_in_the_middle(*args, **kwargs):
        nonlocal passes
        passes += 1
        if passes == 1:
            # The push lands after this pass has fetched: only a second pass can see it.
            report = await real_pass(*args, **kwargs)
            repo.commit({"projects/app/environments/prod.yaml": env_yaml("2.0", ports)})
            await rec.reconcile_now("webhook: push to main")
            return report
        return await real_pass(*args, **kwargs)

    rec.reconcile_once = pass_with_a_push_in_the_middle  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(rec.run_forever(stop))
    try:
        await _until(
            lambda: any(r.version == "2.0" for r in rec.runs.list("app", "prod")[0]),
            "a run of 2.0 started by the second pass",
        )
        await rec.wait_idle()
        states = {r.version: r.state for r in rec.runs.list("app", "prod")[0]}
    finally:
        stop.set()
        await loop
        await rec.close()
        stop_servers(tmp_path / "data")
    assert passes >= 2
    assert states["2.0"] is RunState.SUCCEEDED
