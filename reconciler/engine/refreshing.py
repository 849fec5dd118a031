"""The desired state in force: fetched and loaded from the config repo, kept when invalid.

``refresh`` fetches the config repo (when it has a remote) and loads the newest commit
of the configured branch (``HEAD`` while the branch does not exist). A valid commit
becomes the desired state in force; an invalid one leaves the last good state in force
and its problems are reported — bad config never replaces good config.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from reconciler.errors import ConfigProblem
from reconciler.gitops import model
from reconciler.gitops.history import History
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository

_log = logging.getLogger(__name__)


class DesiredStateSource:
    """The last valid desired state of the config repo, and the newest commit's problems."""

    def __init__(self, repo: GitRepository, history: History, push: bool | None = None):
        self.repo = repo
        self.loader = Loader(repo)
        self.history = history
        self.desired: model.DesiredState | None = None
        self.problems: tuple[ConfigProblem, ...] = ()
        self._push_override = push  # None: the config's ``push_history`` decides
        # One load at a time: a slower load of an older commit finishing last would put
        # that older state back in force (a deploy refreshes right after its version bump).
        self._loading = asyncio.Lock()

    def current(self) -> model.DesiredState | None:
        """The desired state in force (for parts that must read it when they act)."""
        return self.desired

    async def refresh(self) -> tuple[str, tuple[ConfigProblem, ...]]:
        """Fetch and load the newest commit; keep the last good desired state if it is invalid."""
        branch = self.desired.settings.branch if self.desired else "main"

        def load() -> Any:
            if self.repo.has_remote:
                self.repo.fetch()
            has_branch = self.repo.ref_target(f"refs/heads/{branch}") is not None
            return self.loader.load(branch if has_branch else "HEAD")

        async with self._loading:
            result = await asyncio.to_thread(load)
            if not result.ok:
                self.problems = result.problems
                kept = self.desired.commit[:10] if self.desired else "nothing"
                _log.warning("config commit %s is invalid; keeping %s", result.commit[:10], kept)
                return result.commit, result.problems
            if self.desired is None:
                # The model is long-lived: keep the collector from re-scanning it on every
                # pass (full collections over it showed up as 200 ms spikes).
                gc.collect()
                gc.freeze()
            self.desired, self.problems = result.desired, ()
            if self._push_override is None:
                self.history.push = result.desired.settings.push_history and self.repo.has_remote
            return result.commit, result.problems
