"""Canary: grow the share of targets step by step, analysing health over a window at each step.

A step deploys its new targets, then checks every target of the step each ``interval``
for ``window``; ``failure_threshold`` failed checks fail the run with ``canary_failed``.
Between steps it pauses (``promotion: auto``) or waits for a person to promote it.
"""

from __future__ import annotations

import math
from typing import Any

from reconciler.engine.steps import Rejected, Waiting
from reconciler.engine.strategies import Rollout, RolloutFailed
from reconciler.rules import batches
from reconciler.runs import StepKey, StepKind, StepStatus


async def run(rollout: Rollout) -> None:
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
        gate = StepKey.numbered(StepKind.PROMOTE, number)
        if params.get("promotion") == "manual":
            if rollout.steps.is_done(gate):
                continue
            decided = rollout.gates.decided(str(gate))
            if decided is None:
                if rollout.steps.get(gate) is None:
                    rollout.steps.mark(gate, StepStatus.WAITING, {"percent": step.percent})
                raise Waiting(
                    "waiting_approval",
                    str(gate),
                    f"canary at {step.percent}%: waiting for a manual promote",
                    {"canary_step": number, "percent": step.percent},
                )
            if decided is False:
                rollout.steps.mark(gate, StepStatus.FAILED, error="promotion rejected")
                raise Rejected(f"canary promotion at {step.percent}% rejected")
            rollout.steps.mark(gate, StepStatus.SUCCEEDED)
        elif params.get("pause"):
            pause = StepKey.numbered(StepKind.PAUSE, number)
            await rollout.steps.pause(pause, float(params["pause"]), rollout.sleep)


async def _analyse(rollout: Rollout, names: tuple[str, ...], analysis: Any) -> dict[str, Any]:
    window = float(analysis.get("window", 0) or 0)
    interval = float(analysis.get("interval", 1) or 1)
    threshold = int(analysis.get("failure_threshold", 1))
    checks = max(1, math.ceil(window / interval)) if window else 1
    failures: dict[str, str] = {}
    failed_checks = 0
    for i in range(checks):
        for target in rollout.by_name(names):
            health = await rollout.driver.verify(rollout.ctx, target, rollout.color)
            if not health.ok:
                failed_checks += 1
                failures[target.name] = health.detail
        if failed_checks >= threshold:
            raise RolloutFailed(failures, event="canary_failed")
        if i + 1 < checks:
            await rollout.sleep(interval)
    return {"checks": checks, "failed_checks": failed_checks}
