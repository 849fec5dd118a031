"""How long to wait after a failed attempt: exponential backoff with "equal jitter".

After failed attempt ``n`` (1-based) the wait is drawn from ``[cap/2, cap]`` where
``cap = min(max_backoff, backoff * 2**(n-1))``. Half the wait is guaranteed, so a
struggling receiver or target always gets a breather, and the other half is random, so
many reconcilers failing at once do not retry in lockstep. Used by callback deliveries
(``reconciler.alert.retries``) and by a pipeline task's ``retries``. Pure: the random
draw comes in as ``jitter``.
"""

from __future__ import annotations


def bounds(attempt: int, backoff: float, max_backoff: float) -> tuple[float, float]:
    """The (lowest, highest) wait after failed attempt number ``attempt``."""
    # Cap the exponent: 2**1000 is fine for ints but overflows a float product.
    cap = min(max_backoff, backoff * 2 ** min(max(attempt - 1, 0), 60))
    return cap / 2, cap


def delay(
    attempt: int, backoff: float, max_backoff: float, jitter: float, at_least: float = 0.0
) -> float:
    """The wait after failed attempt ``attempt``; ``jitter`` is a draw from [0, 1).

    ``at_least`` is a wait the failure itself asked for (``TemporaryError.delay``): the
    backoff never cuts it short.
    """
    low, high = bounds(attempt, backoff, max_backoff)
    return max(low + (high - low) * min(max(jitter, 0.0), 1.0), at_least)
