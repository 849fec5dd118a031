"""Client pieces that need no network: reconnect backoff and fingerprint handling."""

from __future__ import annotations

import itertools
import random

from agent import client


def test_backoff_doubles_with_jitter_and_caps_at_60_seconds() -> None:
    delays = list(itertools.islice(client.backoff_delays(0.5, 60.0, random.Random(4)), 12))
    for attempt, delay in enumerate(delays):
        ceiling = min(60.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 60.0 and delays[-1] >= 30.0
    assert len(set(delays)) == len(delays)  # jittered, not lock-step


def test_fingerprints_compare_regardless_of_format() -> None:
    assert client.normalize_fingerprint("ab:cd:ef") == client.normalize_fingerprint("ABCDEF")
