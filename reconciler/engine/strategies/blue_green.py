"""Blue-green: start the new color beside the old, verify it, switch, keep the old for a while.

The new color is the one not serving now (from the last successful run). Nothing is
switched unless every target of the new color is healthy; the old color stays for
``rollback_window`` and is retired afterwards by the reconciler.
"""

from __future__ import annotations

from reconciler.engine.strategies import Rollout
from reconciler.runs import StepKey


def other(color: str | None) -> str:
    return "green" if color == "blue" else "blue"


async def run(rollout: Rollout) -> None:
    live = rollout.result.get("live_color")
    rollout.color = rollout.result.get("color") or other(live)
    rollout.result["color"] = rollout.color
    await rollout.deploy_and_verify(rollout.targets, f"{rollout.color} color")
    color = rollout.color
    await rollout.steps.once(StepKey.switch(), lambda: _switch(rollout, color))
    rollout.result["switched"] = True
    if live:
        rollout.result["retire_color"] = live
        rollout.result["rollback_window"] = float(
            rollout.strategy.params.get("rollback_window") or 0
        )


async def _switch(rollout: Rollout, color: str) -> dict[str, str]:
    await rollout.driver.switch(rollout.ctx, rollout.targets, color)
    return {"color": color}
