"""Strategy step math: rolling batches, canary steps, blue-green phases, validation."""

from __future__ import annotations

import pytest

from reconciler.rules.batches import (
    BLUE_GREEN_PHASES,
    BlueGreenPhase,
    CanaryStep,
    amount_problems,
    canary_step_problems,
    canary_steps,
    effective_batch_size,
    resolve_amount,
    rolling_batches,
    rolling_problems,
)


def names(count: int) -> tuple[str, ...]:
    return tuple(f"t{i}" for i in range(1, count + 1))


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (1, 10, 1),
        (3, 10, 3),
        (50, 10, 50),  # an absolute count is taken as written; batching caps it
        ("25%", 8, 2),
        ("25%", 9, 3),  # rounds up
        ("10%", 3, 1),  # at least 1
        ("1%", 1000, 10),
        ("1%", 1, 1),
        ("29%", 100, 29),  # integer math: no 28.999… from floats
        ("100%", 7, 7),
        (" 50 % ", 4, 2),
        ("33%", 0, 1),
    ],
)
def test_resolve_amount(value: int | str, total: int, expected: int) -> None:
    assert resolve_amount(value, total) == expected


@pytest.mark.parametrize(
    ("total", "batch_size", "max_unavailable", "expected"),
    [
        (10, 3, None, 3),
        (10, 3, 2, 2),
        (10, "50%", "20%", 2),
        (10, 1, 5, 1),
        (10, "100%", None, 10),
        (3, "10%", "10%", 1),
    ],
)
def test_effective_batch_size(
    total: int, batch_size: int | str, max_unavailable: int | str | None, expected: int
) -> None:
    assert effective_batch_size(total, batch_size, max_unavailable) == expected


@pytest.mark.parametrize(
    ("count", "batch_size", "max_unavailable", "expected"),
    [
        (0, 2, None, ()),
        (1, 1, None, (("t1",),)),
        (5, 2, None, (("t1", "t2"), ("t3", "t4"), ("t5",))),
        (5, 10, None, (("t1", "t2", "t3", "t4", "t5"),)),
        (4, "50%", None, (("t1", "t2"), ("t3", "t4"))),
        (5, "50%", None, (("t1", "t2", "t3"), ("t4", "t5"))),
        (4, "25%", None, (("t1",), ("t2",), ("t3",), ("t4",))),
        (3, "10%", None, (("t1",), ("t2",), ("t3",))),
        (6, 3, 2, (("t1", "t2"), ("t3", "t4"), ("t5", "t6"))),
        (6, "100%", "50%", (("t1", "t2", "t3"), ("t4", "t5", "t6"))),
        (4, 2, 3, (("t1", "t2"), ("t3", "t4"))),
    ],
)
def test_rolling_batches(
    count: int,
    batch_size: int | str,
    max_unavailable: int | str | None,
    expected: tuple[tuple[str, ...], ...],
) -> None:
    batches = rolling_batches(names(count), batch_size, max_unavailable)
    assert batches == expected
    # every target exactly once, order kept
    assert tuple(t for batch in batches for t in batch) == names(count)


def test_rolling_keeps_given_order() -> None:
    assert rolling_batches(["web-3", "web-1", "web-2"], 2) == (("web-3", "web-1"), ("web-2",))


@pytest.mark.parametrize("bad", [0, -1, "0%", "101%", "x", "25", True, None, 2.5])
def test_rolling_batches_rejects_bad_amounts(bad: object) -> None:
    with pytest.raises(ValueError):
        rolling_batches(names(3), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "steps", "expected"),
    [
        (
            10,
            [10, 50, 100],
            [
                (10, ("t1",), ("t1",)),
                (50, names(5), ("t2", "t3", "t4", "t5")),
                (100, names(10), ("t6", "t7", "t8", "t9", "t10")),
            ],
        ),
        (
            3,
            [10, 50, 100],
            [(10, ("t1",), ("t1",)), (50, ("t1", "t2"), ("t2",)), (100, names(3), ("t3",))],
        ),
        # a step that adds nobody stays, so its verification and pause still happen
        (
            3,
            [10, 20, 100],
            [(10, ("t1",), ("t1",)), (20, ("t1",), ()), (100, names(3), ("t2", "t3"))],
        ),
        (1, [25, 100], [(25, ("t1",), ("t1",)), (100, ("t1",), ())]),
        (1, [100], [(100, ("t1",), ("t1",))]),
        (
            4,
            [1, 99, 100],
            [(1, ("t1",), ("t1",)), (99, names(4), names(4)[1:]), (100, names(4), ())],
        ),
        (0, [10, 100], []),
    ],
)
def test_canary_steps(
    count: int, steps: list[int], expected: list[tuple[int, tuple[str, ...], tuple[str, ...]]]
) -> None:
    result = canary_steps(names(count), steps)
    assert result == tuple(CanaryStep(p, targets, added) for p, targets, added in expected)
    if result:
        assert result[-1].targets == names(count)
        assert tuple(t for step in result for t in step.added) == names(count)


@pytest.mark.parametrize("steps", [[50, 10, 100], [10, 50], [], [0, 100], [10, 10, 100]])
def test_canary_steps_rejects_bad_steps(steps: list[int]) -> None:
    with pytest.raises(ValueError):
        canary_steps(names(4), steps)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([10, 50, 100], []),
        ([100], []),
        ([], ["steps must be a non-empty list of percentages ending with 100"]),
        (None, ["steps must be a non-empty list of percentages ending with 100"]),
        ("10,100", ["steps must be a non-empty list of percentages ending with 100"]),
        ([10, 50], ["the last step must be 100, got 50"]),
        ([50, 10, 100], ["steps[1] must be greater than the step before it (50), got 10"]),
        ([10, 10, 100], ["steps[1] must be greater than the step before it (10), got 10"]),
        ([0, 100], ["steps[0] must be between 1 and 100, got 0"]),
        ([10, 150], ["steps[1] must be between 1 and 100, got 150"]),
        (["10%", 100], ["steps[0] must be an integer percentage, got '10%'"]),
        ([True, 100], ["steps[0] must be an integer percentage, got True"]),
        ([10.5, 100], ["steps[0] must be an integer percentage, got 10.5"]),
    ],
)
def test_canary_step_problems(steps: object, expected: list[str]) -> None:
    assert canary_step_problems(steps) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, []),
        (100, []),
        ("1%", []),
        ("100%", []),
        (0, ["batch_size must be at least 1, got 0"]),
        (-2, ["batch_size must be at least 1, got -2"]),
        ("0%", ["batch_size percentage must be between 1% and 100%, got '0%'"]),
        ("150%", ["batch_size percentage must be between 1% and 100%, got '150%'"]),
        ("25", ["batch_size must be an integer ≥ 1 or a percentage like \"25%\", got '25'"]),
        ("-5%", ["batch_size must be an integer ≥ 1 or a percentage like \"25%\", got '-5%'"]),
        ("2.5%", ["batch_size must be an integer ≥ 1 or a percentage like \"25%\", got '2.5%'"]),
        (True, ['batch_size must be an integer ≥ 1 or a percentage like "25%", got True']),
        (1.5, ['batch_size must be an integer ≥ 1 or a percentage like "25%", got 1.5']),
        (None, ['batch_size must be an integer ≥ 1 or a percentage like "25%", got None']),
    ],
)
def test_amount_problems(value: object, expected: list[str]) -> None:
    assert amount_problems(value, "batch_size") == expected


@pytest.mark.parametrize(
    ("batch_size", "max_unavailable", "count"),
    [(1, None, 0), ("25%", "10%", 0), (0, None, 1), (0, 0, 2), ("x", "200%", 2)],
)
def test_rolling_problems(batch_size: object, max_unavailable: object, count: int) -> None:
    problems = rolling_problems(batch_size, max_unavailable)
    assert len(problems) == count
    assert all(p.startswith(("batch_size", "max_unavailable")) for p in problems)


def test_blue_green_phases_are_fixed_and_ordered() -> None:
    assert [str(phase) for phase in BLUE_GREEN_PHASES] == [
        "deploy_new",
        "verify",
        "switch",
        "hold",
        "retire",
    ]
    assert [p.serves_new_version for p in BLUE_GREEN_PHASES] == [False, False, True, True, True]
    assert BlueGreenPhase("switch") is BlueGreenPhase.SWITCH
