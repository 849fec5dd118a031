"""Strategy step math: which targets each rolling batch or canary step touches.

Pure functions of the target list and the strategy settings, so the engine, ``quicflow
plan`` and the status page all show the same steps. Targets keep the order they are
given in (the caller decides it: config order, or sorted names), so a resumed run
recomputes exactly the batches it was running.

Amounts (``batch_size``, ``max_unavailable``) are an integer ≥ 1 or a percentage string
``"25%"`` (1–100) of the target count. Percentages round **up** and are at least 1, so
``"10%"`` of 3 targets is 1 and a rollout always makes progress.

The ``*_problems`` helpers return human-readable problems (empty when fine) for the
config loader, which attaches file, line and JSON path to each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_PERCENT = re.compile(r"^\s*(\d+)\s*%\s*$")

Amount = int | str


# --------------------------------------------------------------------------- amounts


def amount_problems(value: Any, field: str) -> list[str]:
    """Problems with an amount: an integer ≥ 1 or a percentage string "1%".."100%"."""
    if isinstance(value, bool):
        return [f'{field} must be an integer ≥ 1 or a percentage like "25%", got {value!r}']
    if isinstance(value, int):
        return [] if value >= 1 else [f"{field} must be at least 1, got {value}"]
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            return [f'{field} must be an integer ≥ 1 or a percentage like "25%", got {value!r}']
        percent = int(match.group(1))
        if not 1 <= percent <= 100:
            return [f"{field} percentage must be between 1% and 100%, got {value!r}"]
        return []
    return [f'{field} must be an integer ≥ 1 or a percentage like "25%", got {value!r}']


def resolve_amount(value: Amount, total: int) -> int:
    """Turn an amount into a target count: percent of ``total`` rounded up, at least 1."""
    problems = amount_problems(value, "amount")
    if problems:
        raise ValueError(problems[0])
    if isinstance(value, int):
        return value
    match = _PERCENT.match(value)
    assert match is not None  # checked by amount_problems
    # Integer ceiling: float math would turn 29 * 100 / 100 into 28.999….
    return max(1, -(-total * int(match.group(1)) // 100))


# --------------------------------------------------------------------------- rolling


def rolling_problems(batch_size: Any, max_unavailable: Any = None) -> list[str]:
    """Problems with rolling settings (``max_unavailable`` may be absent: None)."""
    problems = amount_problems(batch_size, "batch_size")
    if max_unavailable is not None:
        problems += amount_problems(max_unavailable, "max_unavailable")
    return problems


def effective_batch_size(total: int, batch_size: Amount, max_unavailable: Amount | None) -> int:
    """Targets per batch: ``batch_size``, capped by ``max_unavailable`` since a batch is down."""
    size = resolve_amount(batch_size, total)
    if max_unavailable is not None:
        size = min(size, resolve_amount(max_unavailable, total))
    return max(1, size)


def rolling_batches(
    targets: Sequence[str], batch_size: Amount = 1, max_unavailable: Amount | None = None
) -> tuple[tuple[str, ...], ...]:
    """Split ``targets`` into ordered batches; every target appears in exactly one batch."""
    names = tuple(targets)
    if not names:
        return ()
    size = effective_batch_size(len(names), batch_size, max_unavailable)
    return tuple(names[i : i + size] for i in range(0, len(names), size))


# --------------------------------------------------------------------------- canary


@dataclass(frozen=True, slots=True)
class CanaryStep:
    """One canary step: its percentage, every target on the new version, and the newcomers."""

    percent: int
    targets: tuple[str, ...]
    added: tuple[str, ...]


def canary_step_problems(steps: Any) -> list[str]:
    """Problems with canary ``steps``: integers 1–100, strictly ascending, ending at 100."""
    if not isinstance(steps, list | tuple) or not steps:
        return ["steps must be a non-empty list of percentages ending with 100"]
    problems: list[str] = []
    previous = 0
    for index, step in enumerate(steps):
        if isinstance(step, bool) or not isinstance(step, int):
            problems.append(f"steps[{index}] must be an integer percentage, got {step!r}")
            continue
        if not 1 <= step <= 100:
            problems.append(f"steps[{index}] must be between 1 and 100, got {step}")
        elif step <= previous:
            problems.append(
                f"steps[{index}] must be greater than the step before it ({previous}), got {step}"
            )
        previous = max(previous, step)
    if steps[-1] != 100 and not problems:
        problems.append(f"the last step must be 100, got {steps[-1]!r}")
    return problems


def canary_steps(targets: Sequence[str], steps: Sequence[int]) -> tuple[CanaryStep, ...]:
    """Cumulative target sets per canary step (percent rounded up, first step ≥ 1 target)."""
    problems = canary_step_problems(list(steps))
    if problems:
        raise ValueError("; ".join(problems))
    names = tuple(targets)
    if not names:
        return ()
    total = len(names)
    result: list[CanaryStep] = []
    done = 0
    for percent in steps:
        # A step may add nobody (10% then 20% of 3 targets): it still verifies and pauses,
        # as the config asked, rather than silently disappearing.
        count = min(total, max(1, done, -(-total * percent // 100)))
        result.append(CanaryStep(percent, names[:count], names[done:count]))
        done = count
    return tuple(result)


# --------------------------------------------------------------------------- blue-green


class BlueGreenPhase(StrEnum):
    """The fixed phases of a blue-green release, in order."""

    DEPLOY_NEW = "deploy_new"
    VERIFY = "verify"
    SWITCH = "switch"
    HOLD = "hold"
    RETIRE = "retire"

    @property
    def serves_new_version(self) -> bool:
        """Whether traffic goes to the new colour once this phase has completed."""
        return self in (BlueGreenPhase.SWITCH, BlueGreenPhase.HOLD, BlueGreenPhase.RETIRE)


#: Blue-green phases in execution order.
BLUE_GREEN_PHASES: tuple[BlueGreenPhase, ...] = tuple(BlueGreenPhase)
