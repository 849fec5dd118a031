"""Sharing the project/environments between reconciler replicas on one shared store.

Each pass a replica heartbeats, computes which live replica each project/env belongs
to (rendezvous hashing: stable, and when a replica joins or leaves only its share
moves), renews the leases it holds, takes the free or expired leases of the keys that
belong to it, and hands keys that now belong to another live replica over once no run
of them executes here. A replica that dies stops renewing: its leases expire after
``ttl`` and the replicas its keys now hash to take them over — within two lease
periods — and interrupt the dead replica's runs, which the next pass resumes with
their finished steps carried over (``reconciler.runs.carried_over``).

``assign`` is pure; ``Shards`` applies it to ``reconciler.store.leases``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.store.leases import Lease, Leases

#: How long a lease lasts without renewal (seconds); renewed every third of it.
DEFAULT_TTL = 15.0


def _rank(key: str, replica: str) -> bytes:
    return hashlib.sha256(f"{replica}\0{key}".encode()).digest()


def owners(keys: Iterable[str], replicas: Sequence[str]) -> dict[str, str]:
    """Which replica each key belongs to: rendezvous hashing with bounded loads.

    Every key goes to its highest-ranked replica that still has room, room being an
    even share (``ceil(keys / replicas)``), so the split is balanced to within one key
    and the same on every replica that sees the same keys and live replicas. Keys are
    placed in order of how strongly they prefer their first choice, so a replica that
    joins or leaves moves little more than its own share.
    """
    listed = sorted(set(keys))
    names = sorted(set(replicas))
    if not names:
        return {}
    room = -(-len(listed) // len(names))
    load = dict.fromkeys(names, 0)
    ranked = {k: sorted(names, key=lambda r, k=k: _rank(k, r), reverse=True) for k in listed}
    out: dict[str, str] = {}
    for key in sorted(listed, key=lambda k: _rank(k, ranked[k][0]), reverse=True):
        chosen = next(r for r in ranked[key] if load[r] < room)
        load[chosen] += 1
        out[key] = chosen
    return out


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one replica does with the leases of one pass."""

    take: frozenset[str] = frozenset()  # free or expired, and ours now: take them
    keep: frozenset[str] = frozenset()  # held by us and still ours (or busy here): renew
    release: frozenset[str] = frozenset()  # held by us, another live replica's now: hand over


def assign(
    keys: Iterable[str],
    me: str,
    live: Sequence[str],
    leases: Mapping[str, Lease],
    now: float,
    busy: Collection[str] = (),
) -> Assignment:
    """Which leases replica ``me`` takes, keeps and releases (``busy``: runs executing here)."""
    wanted = set(keys)
    belongs = owners(wanted, sorted(set(live) | {me}))
    take, keep, release = set(), set(), set()
    for key in wanted:
        lease = leases.get(key)
        ours = belongs[key] == me
        if lease is not None and lease.owner == me:
            (keep if ours or key in busy else release).add(key)
        elif (lease is None or lease.expires_at < now) and ours:
            take.add(key)
    for key, lease in leases.items():  # keys gone from the config: let go once idle
        if key not in wanted and lease.owner == me and key not in busy:
            release.add(key)
    return Assignment(frozenset(take), frozenset(keep), frozenset(release))


@dataclass
class Claim:
    """The keys this replica holds after a pass's claim, and those it just took over."""

    owned: set[str] = field(default_factory=set)
    taken: set[str] = field(default_factory=set)


class Shards:
    """This replica's share of the project/environments, held through leases."""

    def __init__(
        self,
        leases: Leases,
        owner: str,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ):
        self.leases = leases
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.owned: set[str] = set()
        self.tokens: dict[str, int] = {}

    def claim(self, keys: Iterable[str], busy: Collection[str] = ()) -> Claim:
        """Heartbeat, then take, renew and hand over leases for this pass."""
        now = self.clock()
        self.leases.beat(self.owner, now)
        live = self.leases.live(now, self.ttl)
        plan = assign(keys, self.owner, live, self.leases.all(), now, busy)
        self.leases.release(plan.release, self.owner)
        claim = Claim()
        for key in sorted(plan.keep | plan.take):
            token = self.leases.take(key, self.owner, now, self.ttl)
            if token is None:
                continue  # another replica was faster
            claim.owned.add(key)
            if key in plan.take or key not in self.owned:
                claim.taken.add(key)
            self.tokens[key] = token
        self.owned = claim.owned
        return claim

    def renew(self) -> None:
        """Renew the leases held (between passes); a lease lost meanwhile is dropped."""
        now = self.clock()
        self.leases.beat(self.owner, now)
        for key in sorted(self.owned):
            if self.leases.take(key, self.owner, now, self.ttl) is None:
                self.owned.discard(key)

    def leave(self) -> None:
        """Stop cleanly: heartbeat and leases go at once, so others take over now."""
        self.leases.leave(self.owner)
        self.owned.clear()
