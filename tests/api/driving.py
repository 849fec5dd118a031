"""Drive the real engine into the run states the API tests need: waiting, running, failed, released.

Runs are started as the system (no actor) with a manual trigger and moved through their
gates as alice, the admin, so a test's own user acts only in the step it is about. The
states come from the configs in ``api.configs``: a ``-slow`` version keeps its deploy
running, a ``-fails`` version fails it, ``GATED_FILES`` stops runs at an approval and
then at a canary promote.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from api.configs import PROMOTE_GATE, SLOW_LINE
from api.servers import real_engine

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import model
from reconciler.runs import Run, RunState, StepStatus, Trigger

T = TypeVar("T")


def admin(engine: Reconciler) -> model.User:
    """alice, who may pass every gate."""
    assert engine.desired is not None
    return engine.desired.users["alice"]


def current(engine: Reconciler, run: Run) -> Run:
    """``run`` as the store has it now."""
    found = engine.runs.get(run.id)
    assert found is not None
    return found


async def start(engine: Reconciler, env: str, version: str | None = None) -> Run:
    """Deploy ``version`` (None: the desired one) of app/``env`` and wait until it ends or waits."""
    run = await engine.deploy("app", env, version, actor=None, trigger=Trigger.MANUAL)
    await engine.wait_idle()
    return current(engine, run)


async def waiting_at(engine: Reconciler, env: str, gate: str, version: str | None = None) -> Run:
    """A run of app/``env`` waiting at ``gate`` (the approval, or the promote after it)."""
    run = await start(engine, env, version)
    if gate == PROMOTE_GATE:
        await engine.approve(run.id, admin(engine))
        await engine.wait_idle()
        run = current(engine, run)
    assert run.state is RunState.WAITING_APPROVAL and run.detail["gate"] == gate, run
    return run


async def through_gates(engine: Reconciler, run: Run) -> Run:
    """Approve and promote ``run`` as alice until it ends."""
    while run.state.is_waiting:
        gate = str(run.detail["gate"])
        act = engine.promote if gate.startswith("promote:") else engine.approve
        await act(run.id, admin(engine))
        await engine.wait_idle()
        run = current(engine, run)
    return run


async def released(engine: Reconciler, env: str, version: str | None = None) -> Run:
    """A run of app/``env`` passed through every gate to its end."""
    return await through_gates(engine, await start(engine, env, version))


async def rejected(engine: Reconciler, env: str, version: str | None = None) -> Run:
    """A run of app/``env`` whose approval alice rejected: it ends failed (gated config)."""
    run = await start(engine, env, version)
    await engine.reject(run.id, admin(engine), "not this one")
    await engine.wait_idle()
    return current(engine, run)


async def running(engine: Reconciler, env: str, version: str = "2.0.0-slow") -> Run:
    """A run whose deploy script is running: it printed ``SLOW_LINE`` and sleeps until cancelled."""
    run = await engine.deploy("app", env, version, actor=None, trigger=Trigger.MANUAL)
    await until(
        lambda: current(engine, run).state.is_waiting or _deploying(engine, run.id),
        f"{run.id} to reach its gate or its deploy script",
    )
    run = current(engine, run)
    if run.state.is_waiting:  # gated: pass the approval; the canary's first step then sleeps
        await engine.approve(run.id, admin(engine))
    await until(lambda: _deploying(engine, run.id), f"{run.id} to run its deploy script")
    return current(engine, run)


def _deploying(engine: Reconciler, run_id: str) -> bool:
    steps = engine.runs.steps(run_id)
    started = any(s.key.startswith("deploy:") and s.status is StepStatus.RUNNING for s in steps)
    return started and any(line.line == SLOW_LINE for line in engine.logs.read(run_id))


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (polling) until ``condition()`` holds; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def release_history(repo: Path, data: Path, age_key: str, versions: tuple[str, ...]) -> None:
    """Release each of ``versions`` in turn to app/dev and app/prod (history in the state ref)."""
    async with real_engine(repo, data, age_key) as engine:
        for version in versions:
            for env in ("dev", "prod"):
                run = await released(engine, env, version)
                assert run.state is RunState.SUCCEEDED, run


def in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` in a loop of its own thread (for module-scoped, synchronous fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
