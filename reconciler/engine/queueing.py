"""Queueing deploy requests behind the run executing in their environment: newest wins.

A push that arrives while a deploy of its project/environment executes is not refused:
it waits here, in the one slot of its environment. A newer request takes the slot, and
the one it replaces is handed back so its caller can be told it was superseded; when
the running run ends, ``reconciler.engine.actions`` takes the request out of the slot
and starts it. Each request carries a listener, so whoever queued it (the webhook path,
which records the delivery) learns what it became: the run it started, superseded, or
failed. Bookkeeping only: no I/O, no tasks, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.runs import Trigger

# What a queued request became, as its listener is told.
STARTED = "started"
SUPERSEDED = "superseded"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QueuedDeploy:
    """A deploy request waiting for run ``behind`` of its environment to end.

    ``git_version`` is what Git asked for once the request was made to stick (the
    bumped version, or Git's own when it is pinned instead): if Git asks for anything
    else by the time it may start, Git moved on and the request is dropped.
    """

    project: str
    env: str
    version: str
    trigger: Trigger
    behind: str
    git_version: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.env)


@dataclass(frozen=True, slots=True)
class HandedOver:
    """A deploy request made on a replica that does not hold the environment's lease:
    the version is committed to Git (``commit``; '' when Git already asked for it) and
    ``holder``, the replica reconciling the environment, deploys it at its next pass."""

    project: str
    env: str
    version: str
    holder: str
    commit: str


@dataclass(frozen=True, slots=True)
class QueueOutcome:
    """What a queued request became: ``started`` (with its run), ``superseded`` or ``failed``."""

    status: str
    reason: str
    run_id: str = ""


Listener = Callable[[QueueOutcome], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """A request in its slot, with the actor it runs as and who to tell what became of it."""

    request: QueuedDeploy
    actor: Any = None  # the ``model.User`` that asked (None: the system)
    listener: Listener | None = None


class DeployQueue:
    """One slot per project/environment; a newer request replaces the one waiting there."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str], Entry] = {}

    def put(self, entry: Entry) -> Entry | None:
        """Queue ``entry`` in its environment's slot; the entry it replaced, if any."""
        replaced = self._slots.get(entry.request.key)
        self._slots[entry.request.key] = entry
        return replaced

    def take(self, key: tuple[str, str]) -> Entry | None:
        """Empty the slot of ``key``: the request to start now, or None."""
        return self._slots.pop(key, None)

    def get(self, key: tuple[str, str]) -> QueuedDeploy | None:
        """The request waiting for ``key``, if any."""
        entry = self._slots.get(key)
        return entry.request if entry else None

    def drain(self) -> list[Entry]:
        """Empty every slot (the reconciler is stopping): what was waiting."""
        entries, self._slots = list(self._slots.values()), {}
        return entries
