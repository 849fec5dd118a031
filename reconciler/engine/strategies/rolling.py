"""Rolling: replace targets batch by batch, verifying each batch; stop at the first failed batch."""

from __future__ import annotations

from reconciler.engine.strategies import Rollout
from reconciler.rules import batches
from reconciler.runs import StepKey, StepKind, StepStatus


async def run(rollout: Rollout) -> None:
    params = rollout.strategy.params
    plan = batches.rolling_batches(
        [t.name for t in rollout.targets],
        params.get("batch_size", 1),
        params.get("max_unavailable"),
    )
    rollout.result["batches"] = [list(b) for b in plan]
    for index, batch in enumerate(plan):
        await rollout.deploy_and_verify(rollout.by_name(batch), f"batch {index + 1}")
        number = index + 1
        rollout.steps.mark(
            StepKey.numbered(StepKind.BATCH, number), StepStatus.SUCCEEDED, {"targets": list(batch)}
        )
        pause = float(params.get("pause") or 0)
        if pause and number < len(plan):
            key = StepKey.numbered(StepKind.PAUSE, f"batch-{number}")
            await rollout.steps.pause(key, pause, rollout.sleep)
