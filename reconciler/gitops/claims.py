"""Claims in Git: which reconciler is deploying an environment right now.

Two reconcilers may watch the same config repo from different data dirs (two hosts, or
a second ``serve`` by mistake). Before a run's first step, the engine claims its
environment on ``refs/quicflow/claims/<project>/<env>`` (under the config
subdirectory's path when there is one): a commit whose ``claim.json`` names the run,
the owner process and until when the claim holds. The ref moves only by
compare-and-set — locally under the ref's lock, and on origin by a push that must be a
fast-forward of what was fetched — so of two reconcilers claiming at once exactly one
wins. Releasing is one more commit on the same ref (``released: true``), never a
deletion, so every write is built on the one before and a stale writer is refused.

This module only reads and writes claims; whether a claim still holds (its lease, its
owner alive) is the engine's decision (``engine.claiming``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.errors import SourceError
from reconciler.gitops.repository import (
    CLAIMS_PREFIX,
    GitRepository,
    PushRefused,
    PushRejected,
    RefMoved,
)

_log = logging.getLogger(__name__)
CLAIM_FILE = "claim.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim record: ``run_id`` of ``owner`` deploys ``project/env`` until ``expires_at``."""

    project: str
    env: str
    run_id: str
    owner: str
    claimed_at: str
    expires_at: str
    released: bool = False


@dataclass(frozen=True, slots=True)
class Written:
    """What a claim write did: ``won``, or lost the compare-and-set (``error`` says why)."""

    won: bool
    error: str = ""
    contended: bool = False  # another writer moved the ref: read again and decide again


def render_claim(claim: Claim) -> bytes:
    return (json.dumps(asdict(claim), indent=2, sort_keys=True) + "\n").encode()


def parse_claim(data: bytes) -> Claim | None:
    """The claim in ``data``; None for a file this version cannot read."""
    try:
        raw: dict[str, Any] = json.loads(data)
        return Claim(
            project=str(raw["project"]),
            env=str(raw["env"]),
            run_id=str(raw["run_id"]),
            owner=str(raw["owner"]),
            claimed_at=str(raw["claimed_at"]),
            expires_at=str(raw["expires_at"]),
            released=bool(raw.get("released", False)),
        )
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None


class Claims:
    """The claim refs of one config repo; through origin while ``shared()`` (history is pushed)."""

    def __init__(self, repo: GitRepository, shared: Callable[[], bool] = lambda: False):
        self.repo = repo
        self.shared = shared

    def ref(self, project: str, env: str) -> str:
        prefix = f"{_UNSAFE.sub('_', self.repo.subdir)}/" if self.repo.subdir else ""
        return f"{CLAIMS_PREFIX}{prefix}{project}/{env}"

    def fetch(self) -> None:
        """Bring claims (and the state ref they guard) up to date from origin, when shared."""
        if self.shared() and self.repo.has_remote:
            self.repo.fetch_history()

    def read(self, project: str, env: str) -> tuple[str | None, Claim | None]:
        """(the claim ref's commit, the claim it records) as this repository has them."""
        commit = self.repo.ref_target(self.ref(project, env))
        if commit is None:
            return None, None
        tree = self.repo.root_tree_of_commit(commit)
        entry = {e.name: e for e in self.repo.entries(tree)}.get(CLAIM_FILE)
        if entry is None or entry.is_tree:
            return commit, None
        return commit, parse_claim(self.repo.blob(entry.id))

    def write(self, claim: Claim, base: str | None, message: str) -> Written:
        """Record ``claim`` on top of ``base`` (the commit the decision was made on).

        Lost when the ref moved since ``base`` was read, here or on origin; a claim that
        could not be pushed (origin unreachable) is not a claim another reconciler sees,
        so it is lost too, with the reason — unless origin declines our refs altogether
        (``PushRefused``): then it holds here only, with a warning.
        """
        ref = self.ref(claim.project, claim.env)
        with self.repo.lock:
            try:
                self.repo.commit_files(ref, {CLAIM_FILE: render_claim(claim)}, message, base=base)
            except RefMoved as exc:
                return Written(False, str(exc), contended=True)
            if not (self.shared() and self.repo.has_remote):
                return Written(True)
            try:
                self.repo.push_refs([ref])
            except PushRefused as exc:
                # Origin declines our refs altogether (a host protecting refs/quicflow/*):
                # no claim can be shared there, ours or another's. Refusing to deploy would
                # only make a run that fails at every poll; the claim holds here, and the
                # history it guards is reported unpushed until origin takes it.
                _log.warning(
                    "%s/%s claimed here only: %s; reconcilers on other hosts cannot see it",
                    claim.project,
                    claim.env,
                    exc,
                )
                return Written(True, str(exc))
            except PushRejected as exc:
                return Written(False, str(exc), contended=True)
            except SourceError as exc:
                return Written(False, str(exc))
        return Written(True)
