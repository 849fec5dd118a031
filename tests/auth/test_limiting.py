"""The failed-authentication limiter: a sliding window per address, bounded memory."""

from __future__ import annotations

from reconciler.auth import limiting


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_until_its_window_has_passed() -> None:
    clock = Clock()
    limiter = limiting.FailureLimiter(max_failures=3, window=60.0, clock=clock)
    for _ in range(2):
        limiter.fail("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") is None
    limiter.fail("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60.0
    assert limiter.retry_after("10.0.0.2") is None
    clock.now += 59.0
    assert limiter.retry_after("10.0.0.1") == 1.0
    clock.now += 1.0
    assert limiter.retry_after("10.0.0.1") is None


def test_memory_is_bounded_by_the_number_of_addresses() -> None:
    limiter = limiting.FailureLimiter(max_failures=1, clock=Clock(), max_addresses=2)
    for address in ("a", "b", "c"):
        limiter.fail(address)
    assert limiter.retry_after("a") is None  # forgotten, oldest first
    assert limiter.retry_after("c") is not None
