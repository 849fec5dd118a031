"""Sharing the project/environments between reconciler replicas on one shared store.

Each pass a replica heartbeats, computes which live replica each project/env belongs
to (rendezvous hashing: stable, and when a replica joins or leaves only its share
moves), renews the leases it holds, takes the free or expired leases of the keys that
belong to it, and hands keys that now belong to another live replica over once no run
of them executes here. A replica that dies stops renewing: its leases expire after
``ttl`` and the replicas its keys now hash to take them over — within two lease
periods — and interrupt the dead replica's runs, which the next pass resumes with
their finished steps carried over (``reconciler.runs.carried_over``).

``assign`` is pure; ``Shards`` applies it to ``reconciler.store.leases``: ``share`` once
per pass, ``keep_renewed`` between passes, ``leave`` on a clean stop.

What a replica does not own it does not dispatch, resume or retire; runs it owned are
interrupted and resumed by whoever takes its leases over. What stays per replica: the
QUIC hub (an agent connects to one replica and runs the steps of the runs that replica
owns) and live log streams (lines of another replica's run are in the store; the
stream of this replica shows its own runs live).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ConfigError
from reconciler.store.leases import Lease, Leases

_log = logging.getLogger(__name__)

#: How long a lease lasts without renewal (seconds); renewed every third of it.
DEFAULT_TTL = 15.0


TTL_ENV = "QUICFLOW_LEASE_TTL"


def ttl_from(environ: Mapping[str, str] | None = None) -> float:
    """The lease period: ``QUICFLOW_LEASE_TTL`` seconds (at least 1), else ``DEFAULT_TTL``."""
    text = (os.environ if environ is None else environ).get(TTL_ENV, "")
    if not text:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        raise ConfigError(f"{TTL_ENV}={text!r} is not a number of seconds") from None
    if ttl < 1:
        raise ConfigError(f"{TTL_ENV}={text!r}: a lease lasts at least 1 second")
    return ttl


def key(project: str, env: str) -> str:
    """The lease key of a project/env."""
    return f"{project}/{env}"


def unkey(text: str) -> tuple[str, str]:
    project, _, env = text.partition("/")
    return project, env


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

    def renew(self) -> set[str]:
        """Renew the leases held (between passes); those lost meanwhile are dropped, and returned."""
        now = self.clock()
        self.leases.beat(self.owner, now)
        lost = set()
        for key in sorted(self.owned):
            if self.leases.take(key, self.owner, now, self.ttl) is None:
                lost.add(key)
        self.owned -= lost
        return lost

    def confirm(self, project: str, env: str) -> str:
        """Renew the lease on ``project/env`` right before work starts on it: '' while this
        replica still holds it with the token it took, else why not.

        A pass computes what it holds at its start; if the pass outlives the lease (a
        slow pass, a stalled loop) another replica may have taken it over meanwhile, and
        a run created from the stale share would deploy the same release twice. The
        renewal is one atomic upsert, so holding it here means a full lease period ahead.
        """
        name = key(project, env)
        token = self.tokens.get(name)
        renewed = None
        if name in self.owned and token is not None:
            renewed = self.leases.take(name, self.owner, self.clock(), self.ttl)
        if renewed is not None and renewed == token:
            return ""
        self.owned.discard(name)
        holder = self.holder(project, env)
        if renewed is not None:
            # Ours again, but only after it was free: what was decided under the old
            # token is stale; the next pass decides afresh under the new one.
            self.tokens[name] = renewed
            holder = ""
        return (
            f"the lease on {name} changed hands during this pass"
            + (f" (held by {holder} now)" if holder else "")
            + "; the next pass decides again"
        )

    def holder(self, project: str, env: str) -> str:
        """The replica that holds ``project/env`` ('' when this one does, or none does)."""
        name = key(project, env)
        if name in self.owned:
            return ""
        lease = self.leases.all().get(name)
        if lease is None or lease.expires_at < self.clock():
            return ""
        return lease.owner

    def share(
        self, environments: Iterable[Any], executing: Collection[tuple[str, str]]
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """One pass's claim over the config's ``environments`` (``project``/``name``):
        the (project, env) pairs held now, and those just taken over."""
        keys = [key(e.project, e.name) for e in environments]
        claim = self.claim(keys, busy=[key(*k) for k in executing])
        taken = {unkey(k) for k in claim.taken}
        if taken:
            _log.info("took over %d project/envs (holding %d)", len(taken), len(claim.owned))
        return {unkey(k) for k in claim.owned}, taken

    async def keep_renewed(self, stop: asyncio.Event, on_lost: Callable[[], None]) -> None:
        """Renew the leases every third of their life until ``stop`` (a pass may wait on a
        long poll meanwhile); a lease lost to another replica is logged and ``on_lost``
        called, so a pass soon stops dispatching it."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl / 3)
            if stop.is_set():
                return
            try:
                lost = self.renew()
            except Exception as exc:  # the store is away: the leases expire, others take over
                _log.error("renewing this replica's leases failed: %s", exc)
                continue
            if lost:
                _log.error("leases lost to another replica: %s", ", ".join(sorted(lost)))
                on_lost()

    def leave(self) -> None:
        """Stop cleanly: heartbeat and leases go at once, so others take over now."""
        self.leases.leave(self.owner)
        self.owned.clear()
