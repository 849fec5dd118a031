"""Claiming an environment before a run's first step, so two reconcilers never both deploy.

Two reconcilers on one config repo (different data dirs, perhaps different hosts) plan
the same release. Before its first step, a run claims its environment in Git
(``gitops.claims``: compare-and-set on ``refs/quicflow/claims/…``, through origin when
history is pushed); the one that loses stops ``superseded`` and says who holds the
environment. The winner then looks at the state ref once more: if another reconciler
recorded this very release since the run was created, there is nothing left to do.

A claim is a lease: it names its owner process and holds until ``expires_at`` (wall
clock time, whatever clock the engine's windows are read with). While
the run executes, this process renews it every quarter of the lease; when the run ends
the recorder releases it right after writing the state commit, and claims of runs that
stopped executing (waiting for a person) are released at the next renewal. A claimer
that crashed is taken over once its lease is over — at once when its owner ran on this
host and is gone. Blue-green retirement holds the same claim while it stops a color, so
no run of this or another reconciler deploys onto that color meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection

from reconciler.engine import owners
from reconciler.engine.running import iso
from reconciler.errors import QuicFlowError
from reconciler.gitops.claims import Claim, Claims
from reconciler.gitops.history import SUCCEEDED, History
from reconciler.runs import Run

_log = logging.getLogger(__name__)

#: Seconds a claim holds without a renewal (a crashed owner's claim is free after that).
LEASE = 120.0
#: How often a claim write that lost the compare-and-set is decided again.
ATTEMPTS = 5


def _wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def keeps_out(claim: Claim | None, owner: str, now: dt.datetime) -> bool:
    """Whether ``claim`` keeps ``owner`` out of its environment at ``now``."""
    if claim is None or claim.released or claim.owner == owner:
        return False
    try:
        if _parse(claim.expires_at) <= now:
            return False  # its owner stopped renewing it: crashed, or cut off
    except ValueError:
        return False
    # A dead process of this host is known to be gone before its lease ends.
    return not (owners.here(claim.owner) and not owners.alive(claim.owner))


def describe(claim: Claim) -> str:
    """Who holds an environment, for the error of the run that could not claim it."""
    return (
        f"{claim.project}/{claim.env} is being deployed by another reconciler: run "
        f"{claim.run_id} of {claim.owner} (claimed {claim.claimed_at}, held until "
        f"{claim.expires_at} unless renewed)"
    )


class Claimer:
    """This process's claims on environments: taken, renewed while executing, released."""

    def __init__(
        self,
        claims: Claims,
        history: History,
        *,
        executing: Callable[[], Collection[tuple[str, str]]],
        now: Callable[[], dt.datetime] = _wall_clock,
        owner: str | None = None,
        lease: float = LEASE,
    ):
        self.claims = claims
        self.history = history
        self.now = now
        self.executing = executing
        self.owner = owner or owners.current()
        self.lease = lease
        self.held: dict[tuple[str, str], Claim] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pinned: set[tuple[str, str]] = set()
        self._renewer: asyncio.Task[None] | None = None

    # -- runs ------------------------------------------------------------------------

    async def claim(self, run: Run) -> str:
        """Claim ``run``'s environment for it: '' once held, else why the run must not start."""
        async with self._lock(run.key):
            why = await asyncio.to_thread(self._claim, run.project, run.env, run.id)
            if not why:
                why = await asyncio.to_thread(self._done_elsewhere, run)
                if why:
                    await asyncio.to_thread(self._release, run.key, run.id)
        if not why:
            self._start_renewing()
        return why

    async def release(self, key: tuple[str, str], run_id: str) -> None:
        """Release ``run_id``'s claim on ``key`` (after its state commit is written)."""
        if self.held.get(key) is None:
            return
        async with self._lock(key):
            await asyncio.to_thread(self._release, key, run_id)

    def held_elsewhere(self, key: tuple[str, str]) -> str | None:
        """Why another reconciler holds ``key`` now, as last fetched (no network); or None."""
        try:
            _, found = self.claims.read(*key)
        except QuicFlowError:
            return None
        return describe(found) if found and keeps_out(found, self.owner, self.now()) else None

    # -- other holders ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def holding(self, key: tuple[str, str], holder: str) -> AsyncIterator[str]:
        """Hold ``key`` for ``holder`` (not a run) for the block; yields '' or why it could not.

        Runs of this process that want ``key`` meanwhile wait for the block to end.
        """
        async with self._lock(key):
            mine = self.held.get(key)
            if mine is not None:
                # A run of this process holds it (or held it until it started waiting).
                yield f"{key[0]}/{key[1]} is held by {mine.run_id} in this process"
                return
            why = await asyncio.to_thread(self._claim, key[0], key[1], holder)
            if why:
                yield why
                return
            self._pinned.add(key)
            self._start_renewing()
            try:
                yield ""
            finally:
                self._pinned.discard(key)
                await asyncio.to_thread(self._release, key, holder)

    # -- renewing --------------------------------------------------------------------

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="claims"
            )

    async def _renew_forever(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease / 4)
            await self.renew()

    async def renew(self) -> None:
        """Extend the claims of what still executes here; release the others'."""
        executing = set(self.executing())
        for key, claim in list(self.held.items()):
            try:
                if key in self._pinned:
                    # Its holder keeps the key's lock for the whole block.
                    await asyncio.to_thread(self._renew, key, claim)
                    continue
                lock = self._lock(key)
                if lock.locked():
                    continue  # being claimed or released right now
                async with lock:
                    # Under the lock, so a release by the recorder is never undone by a
                    # renewal that read the claim before it.
                    current = self.held.get(key)
                    if current is None:
                        continue
                    if key in executing:
                        await asyncio.to_thread(self._renew, key, current)
                    else:
                        await asyncio.to_thread(self._release, key, current.run_id)
            except QuicFlowError as exc:
                _log.warning("could not renew the claim on %s/%s: %s", *key, exc)

    async def close(self) -> None:
        """Stop renewing and release every claim still held (shutdown)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        for key, claim in list(self.held.items()):
            with contextlib.suppress(QuicFlowError):
                await asyncio.to_thread(self._release, key, claim.run_id)

    # -- in a thread: the Git side ---------------------------------------------------

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _claim(self, project: str, env: str, holder: str) -> str:
        self.claims.fetch()
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(0.05 * attempt)  # the other writer may still hold the ref's lock
            base, found = self.claims.read(project, env)
            now = self.now()
            if keeps_out(found, self.owner, now):
                assert found is not None
                return describe(found)
            if found is not None and not found.released and found.owner != self.owner:
                _log.warning(
                    "taking over the claim on %s/%s of %s (run %s): its lease is over "
                    "or its process is gone",
                    project,
                    env,
                    found.owner,
                    found.run_id,
                )
            claim = Claim(
                project,
                env,
                holder,
                self.owner,
                iso(now),
                iso(now + dt.timedelta(seconds=self.lease)),
            )
            written = self.claims.write(claim, base, f"{project}/{env}: claimed by {holder}")
            if written.won:
                self.held[(project, env)] = claim
                return ""
            error = written.error
            if not written.contended:
                return f"could not claim {project}/{env} in Git, so it must not deploy: {error}"
            self.claims.fetch()  # another writer moved the claim: see what it wrote
        return f"lost the claim on {project}/{env} to another writer {ATTEMPTS} times: {error}"

    def _done_elsewhere(self, run: Run) -> str:
        """Why ``run`` has nothing left to do: another reconciler recorded this very release
        after the run was created (it planned from a state that has moved on); or ''."""
        record = self.history.record(run.project, run.env)
        if (
            record is not None
            and record.run_id != run.id
            and record.outcome == SUCCEEDED
            and (record.version, record.config_hash) == (run.version, run.config_hash)
            and record.finished_at >= run.created_at
        ):
            return (
                f"{run.project}/{run.env} {run.version} was released meanwhile by run "
                f"{record.run_id} (state ref), so this run has nothing to do"
            )
        return ""

    def _renew(self, key: tuple[str, str], claim: Claim) -> None:
        base, found = self.claims.read(*key)
        if found is None or found.owner != self.owner or found.run_id != claim.run_id:
            # Taken over: this process stopped renewing long enough for its lease to end.
            self.held.pop(key, None)
            _log.error(
                "the claim on %s/%s of run %s was taken over by %s",
                *key,
                claim.run_id,
                found.owner if found else "nobody",
            )
            return
        now = self.now()
        renewed = Claim(
            claim.project,
            claim.env,
            claim.run_id,
            self.owner,
            claim.claimed_at,
            iso(now + dt.timedelta(seconds=self.lease)),
        )
        written = self.claims.write(renewed, base, f"{key[0]}/{key[1]}: renewed for {claim.run_id}")
        if written.won:
            self.held[key] = renewed
        else:
            _log.warning("could not renew the claim on %s/%s: %s", *key, written.error)

    def _release(self, key: tuple[str, str], holder: str) -> None:
        self.held.pop(key, None)
        # No fetch: what this process pushed last is what origin has, unless another
        # writer moved it — and then the claim is not ours to release any more.
        base, found = self.claims.read(*key)
        if found is None or found.released or found.owner != self.owner or found.run_id != holder:
            return  # not ours any more: nothing to release
        released = Claim(
            found.project,
            found.env,
            found.run_id,
            found.owner,
            found.claimed_at,
            iso(self.now()),
            released=True,
        )
        written = self.claims.write(released, base, f"{key[0]}/{key[1]}: released by {holder}")
        if not written.won:
            # Lost: it expires on its own; another reconciler waits at most one lease.
            _log.warning("could not release the claim on %s/%s: %s", *key, written.error)
