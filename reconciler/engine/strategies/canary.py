"""Canary: grow the share of targets step by step, analysing health over a window at each step.

A step deploys its new targets, then checks every target of the step each ``interval``
for ``window``; ``failure_threshold`` failed checks fail the run with ``canary_failed``.
Between steps it pauses (``promotion: auto``) or waits for a person to promote it.

A driver that scales a canary itself (``scales_canary``: Kubernetes, whose one target
is a cluster) is not given targets step by step: each step below 100% runs the canary
at that share of the replicas (``driver.canary``) and analyses it; the last step
promotes (``driver.promote``). A failed analysis aborts the canary (``driver.abort``)
before the run fails, so it never keeps serving, whatever auto_rollback says.
"""

from __future__ import annotations

import math
from typing import Any

from reconciler.drivers import StepFailed
from reconciler.engine.steps import Rejected, Waiting
from reconciler.engine.strategies import Rollout, RolloutFailed
from reconciler.rules import batches
from reconciler.runs import StepKey, StepKind, StepStatus
from reconciler.targets.commands import TargetRef

#: What the canary's pods are called when a driver checks them (``Driver.verify``'s color).
CANARY = "canary"


async def run(rollout: Rollout) -> None:
    if getattr(rollout.driver, "scales_canary", False):
        await _scaled(rollout)
        return
    params = rollout.strategy.params
    steps = batches.canary_steps([t.name for t in rollout.targets], list(params["steps"]))
    analysis = params.get("analysis", {})
    for index, step in enumerate(steps):
        number = index + 1
        try:
            await rollout.deploy_and_verify(rollout.by_name(step.added), f"step {number}")
        except RolloutFailed as exc:
            raise RolloutFailed(
                exc.failures, event="canary_failed", timed_out=exc.timed_out
            ) from None
        await rollout.steps.once(
            StepKey.numbered(StepKind.ANALYSIS, number),
            lambda s=step: _analyse(rollout, s.targets, analysis),
        )
        rollout.emit(
            "canary_step",
            data={"step": number, "percent": step.percent, "targets": list(step.targets)},
        )
        rollout.result["canary_step"] = number
        if number == len(steps):
            return
        await _between_steps(rollout, number, step.percent)


async def _scaled(rollout: Rollout) -> None:
    """Canary steps as shares of one Deployment's replicas (the driver sizes the canary)."""
    params = rollout.strategy.params
    percents = [int(p) for p in params["steps"]]
    analysis = params.get("analysis", {})
    driver: Any = rollout.driver
    names = tuple(t.name for t in rollout.targets)
    for index, percent in enumerate(percents):
        number = index + 1
        for target in rollout.targets:
            if target not in rollout.touched:
                rollout.touched.append(target)
        try:
            if percent < 100:
                for target in rollout.targets:
                    await rollout.steps.once(
                        StepKey.deploy(target.name, f"canary-{percent}"),
                        lambda t=target, p=percent: _canary(rollout, t, p),
                    )
                await rollout.steps.once(
                    StepKey.numbered(StepKind.ANALYSIS, number),
                    lambda: _analyse(rollout, names, analysis, CANARY),
                )
            else:
                for target in rollout.targets:
                    await rollout.steps.once(
                        StepKey.deploy(target.name), lambda t=target: _promote(rollout, t)
                    )
                    await rollout.steps.once(
                        StepKey.verify(target.name), lambda t=target: rollout._verify(t)
                    )
        except (RolloutFailed, StepFailed) as exc:
            for target in rollout.targets:
                try:
                    await driver.abort(rollout.ctx, target)
                except StepFailed as abort_failed:
                    rollout.ctx.log("engine", f"could not remove the canary: {abort_failed}")
            if isinstance(exc, RolloutFailed):
                raise RolloutFailed(
                    exc.failures, event="canary_failed", timed_out=exc.timed_out
                ) from None
            raise RolloutFailed(
                {exc.target: str(exc).split(": ", 1)[-1]},
                event="canary_failed",
                timed_out=exc.timed_out,
            ) from None
        rollout.emit(
            "canary_step", data={"step": number, "percent": percent, "targets": list(names)}
        )
        rollout.result["canary_step"] = number
        if number == len(percents):
            return
        await _between_steps(rollout, number, percent)


async def _canary(rollout: Rollout, target: TargetRef, percent: int) -> dict[str, Any]:
    await rollout.driver.canary(rollout.ctx, target, rollout.version, percent)  # type: ignore[attr-defined]
    return {"version": rollout.version, "percent": percent}


async def _promote(rollout: Rollout, target: TargetRef) -> dict[str, Any]:
    await rollout.driver.promote(rollout.ctx, target, rollout.version)  # type: ignore[attr-defined]
    return {"version": rollout.version, "promoted": True}


async def _between_steps(rollout: Rollout, number: int, percent: int) -> None:
    """After step ``number`` (at ``percent``): wait for a manual promote, or pause."""
    params = rollout.strategy.params
    gate = StepKey.numbered(StepKind.PROMOTE, number)
    if params.get("promotion") == "manual":
        if rollout.steps.is_done(gate):
            return
        decided = rollout.gates.decided(str(gate))
        if decided is None:
            if rollout.steps.get(gate) is None:
                rollout.steps.mark(gate, StepStatus.WAITING, {"percent": percent})
            raise Waiting(
                "waiting_approval",
                str(gate),
                f"canary at {percent}%: waiting for a manual promote",
                {"canary_step": number, "percent": percent},
            )
        if decided is False:
            rollout.steps.mark(gate, StepStatus.FAILED, error="promotion rejected")
            raise Rejected(f"canary promotion at {percent}% rejected")
        rollout.steps.mark(gate, StepStatus.SUCCEEDED)
    elif params.get("pause"):
        pause = StepKey.numbered(StepKind.PAUSE, number)
        await rollout.steps.pause(pause, float(params["pause"]), rollout.sleep)


async def _analyse(
    rollout: Rollout, names: tuple[str, ...], analysis: Any, color: str | None = None
) -> dict[str, Any]:
    """Check ``names`` every interval for the window (``color``: what to check, as drivers name it)."""
    window = float(analysis.get("window", 0) or 0)
    interval = float(analysis.get("interval", 1) or 1)
    threshold = int(analysis.get("failure_threshold", 1))
    checks = max(1, math.ceil(window / interval)) if window else 1
    failures: dict[str, str] = {}
    failed_checks = 0
    for i in range(checks):
        for target in rollout.by_name(names):
            health = await rollout.driver.verify(rollout.ctx, target, color or rollout.color)
            if not health.ok:
                failed_checks += 1
                failures[target.name] = health.detail
        if failed_checks >= threshold:
            raise RolloutFailed(failures, event="canary_failed")
        if i + 1 < checks:
            await rollout.sleep(interval)
    return {"checks": checks, "failed_checks": failed_checks}
