"""Rollout strategies — rolling, canary, blue-green — generic over any deploy driver.

A strategy decides when and where each driver step runs; the step math comes from
``reconciler.rules.batches``. Every driver call is a keyed step (``deploy:web-1``,
``verify:web-1``, ``switch``…, typed as ``reconciler.runs.StepKey``), so a replayed
run skips what it already did.
``Rollout`` carries what the strategies share and remembers which targets were
touched, so a failed run rolls back exactly those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.drivers import DeployContext, Driver, StepFailed
from reconciler.engine.steps import Steps
from reconciler.gitops import model
from reconciler.runs import StepKey
from reconciler.targets.commands import TargetRef


class RolloutFailed(Exception):
    """Some targets failed to deploy or verify; ``failures`` maps target → reason."""

    def __init__(
        self, failures: dict[str, str], event: str = "deploy_failed", timed_out: bool = False
    ):
        self.failures = failures
        self.event = event
        self.timed_out = timed_out
        super().__init__("; ".join(f"{t}: {m}" for t, m in sorted(failures.items())))


class Gates(Protocol):
    """How a strategy asks whether a person has let it continue."""

    def decided(self, gate: str) -> bool | None: ...

    def request(self, gate: str, reason: str) -> None: ...


@dataclass
class Rollout:
    """One strategy execution: the driver, the targets and the step log it works with."""

    ctx: DeployContext
    driver: Driver
    targets: list[TargetRef]
    steps: Steps
    strategy: model.Strategy
    version: str
    gates: Gates
    sleep: Callable[[float], Any] = asyncio.sleep
    emit: Callable[..., None] = lambda *a, **k: None
    color: str | None = None
    touched: list[TargetRef] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def by_name(self, names: Sequence[str]) -> list[TargetRef]:
        index = {t.name: t for t in self.targets}
        return [index[n] for n in names]

    async def deploy_and_verify(self, group: Sequence[TargetRef], label: str = "") -> None:
        """Deploy to ``group`` concurrently, then verify each; raise RolloutFailed on any failure."""

        async def one(target: TargetRef) -> None:
            if target not in self.touched:
                self.touched.append(target)
            deploy = StepKey.deploy(target.name, self.color)
            await self.steps.once(deploy, lambda: self._deploy(target))
            await self.steps.once(
                StepKey.verify(target.name, self.color), lambda: self._verify(target)
            )

        outcomes = await asyncio.gather(*(one(t) for t in group), return_exceptions=True)
        failures: dict[str, str] = {}
        timed_out = False
        for target, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, StepFailed):
                failures[target.name] = str(outcome).split(": ", 1)[-1]
                timed_out = timed_out or outcome.timed_out
            elif isinstance(outcome, BaseException):
                raise outcome
        if failures:
            raise RolloutFailed(failures, timed_out=timed_out)

    async def _deploy(self, target: TargetRef) -> dict[str, Any]:
        await self.driver.deploy(self.ctx, target, self.version, self.color)
        return {"version": self.version, **({"color": self.color} if self.color else {})}

    async def _verify(self, target: TargetRef) -> dict[str, Any]:
        health = await self.driver.verify(self.ctx, target, self.color)
        if not health.ok:
            raise StepFailed(target.name, f"unhealthy: {health.detail}")
        return {"health": health.detail}


async def run(rollout: Rollout) -> dict[str, Any]:
    """Run the rollout with its strategy; return what history should know (e.g. color)."""
    from reconciler.engine.strategies import blue_green, canary, rolling

    kind = rollout.strategy.type
    if kind is model.StrategyType.CANARY:
        await canary.run(rollout)
    elif kind is model.StrategyType.BLUE_GREEN:
        await blue_green.run(rollout)
    else:
        await rolling.run(rollout)
    # What the driver learnt for the state ref (the Kubernetes driver: the digest pods run).
    rollout.result.update(getattr(rollout.driver, "recorded", None) or {})
    return rollout.result
