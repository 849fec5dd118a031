"""The failed-authentication limiter: per source address, a sliding window of failures.

Failed authentication (a wrong bearer token or login) is counted per source address;
past ``max_failures`` in ``window`` seconds the address's bad credentials are refused
(429) until the window has passed. Callers ask only after a credential failed: a good
token is never refused here, so users sharing an address (a NAT, a proxy) are not
locked out by one of them sending a wrong token. The counts are kept in memory only
(bounded by ``max_addresses``).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureLimiter:
    """Counts failed authentications per source address in a sliding window."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._failures.get(address)
        if not times:
            return None
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.max_failures:
            return None
        return max(times[0] + self.window - now, 0.1)

    def fail(self, address: str) -> None:
        """Count one failure for ``address``."""
        times = self._failures.setdefault(address, deque())
        self._failures.move_to_end(address)
        times.append(self.clock())
        while len(times) > self.max_failures:
            times.popleft()
        # A flood from many addresses must not grow memory without bound.
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
