"""The desired state in force: fetched and loaded from the config repo, kept when invalid.

``refresh`` fetches the config repo (when it has a remote) and loads the newest commit
of the configured branch (``HEAD`` while the branch does not exist). A valid commit
becomes the desired state in force; an invalid one leaves the last good state in force
and its problems are reported — bad config never replaces good config. An invalid
commit is logged once, with each problem, when it is first seen, not at every poll.

With ``settings.enforce_policy`` in the state in force, a new commit is also judged
as ``quicflow plan --base`` judges a pull request (``gitops.policy.enforced``): when
an author of a commit since the one in force may not make the change, the new commit
is refused like an invalid one — the last accepted commit stays in force.

The fetch brings origin's history in without losing ours (``GitRepository``
integrates it); then history recorded here that origin lacks — a push that failed — is
pushed again (``History.push_pending``), once per poll until origin takes it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ConfigProblem
from reconciler.gitops import model, policy
from reconciler.gitops.history import History
from reconciler.gitops.loading import Loader, LoadResult
from reconciler.gitops.repository import GitRepository

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """The config in force and, when the newest commit was refused, that commit and why."""

    in_force: str | None  # the commit whose desired state is in force
    newest: str | None  # the newest commit of the branch that was loaded
    problems: tuple[ConfigProblem, ...] = ()  # the newest commit's, when it was refused
    author: str = ""  # "Name <email>" of the refused commit
    summary: str = ""  # its first message line

    @property
    def valid(self) -> bool:
        return not self.problems


class DesiredStateSource:
    """The last valid desired state of the config repo, and the newest commit's problems."""

    def __init__(self, repo: GitRepository, history: History, push: bool | None = None):
        self.repo = repo
        self.loader = Loader(repo)
        self.history = history
        self.desired: model.DesiredState | None = None
        self.problems: tuple[ConfigProblem, ...] = ()
        self._push_override = push  # None: the config's ``push_history`` decides
        self._reported: str | None = None  # the invalid commit whose problems were logged
        self._refused: tuple[str, str] = ("", "")  # (author, summary) of the invalid newest commit
        self._newest: str | None = None
        # One load at a time: a slower load of an older commit finishing last would put
        # that older state back in force (a deploy refreshes right after its version bump).
        self._loading = asyncio.Lock()

    def current(self) -> model.DesiredState | None:
        """The desired state in force (for parts that must read it when they act)."""
        return self.desired

    def status(self) -> ConfigStatus:
        """What is in force, and what was refused of the newest commit (no I/O)."""
        author, summary = self._refused if self.problems else ("", "")
        return ConfigStatus(
            self.desired.commit if self.desired else None,
            self._newest,
            self.problems,
            author,
            summary,
        )

    async def refresh(self) -> tuple[str, tuple[ConfigProblem, ...]]:
        """Fetch and load the newest commit; keep the last good desired state if it is invalid."""
        if self.desired is not None:
            branch = self.desired.settings.branch
        else:  # a mirror of a URL follows the remote's default branch
            branch = (self.repo.default_branch if self.repo.remote_url else None) or "main"

        def load() -> Any:
            if self.repo.has_remote:
                self.repo.fetch()
            has_branch = self.repo.ref_target(f"refs/heads/{branch}") is not None
            return self._enforce(self.loader.load(branch if has_branch else "HEAD"))

        async with self._loading:
            result = await asyncio.to_thread(load)
            self._newest = result.commit
            if not result.ok:
                self.problems = result.problems
                if self._reported != result.commit:
                    self._reported = result.commit
                    info = await asyncio.to_thread(self.repo.commit, result.commit)
                    self._refused = (f"{info.author_name} <{info.author_email}>", info.summary)
                    kept = self.desired.commit[:10] if self.desired else "nothing"
                    _log.warning(
                        "config commit %s by %s is invalid (%d problem%s); keeping %s:\n%s",
                        result.commit[:10],
                        self._refused[0],
                        len(result.problems),
                        "s" if len(result.problems) != 1 else "",
                        kept,
                        "\n".join(f"  {problem}" for problem in result.problems),
                    )
                await self._push_pending()
                return result.commit, result.problems
            if self.desired is None:
                # The model is long-lived: keep the collector from re-scanning it on every
                # pass (full collections over it showed up as 200 ms spikes).
                gc.collect()
                gc.freeze()
            self.desired, self.problems = result.desired, ()
            self._reported = None
            if self._push_override is None:
                self.history.push = result.desired.settings.push_history and self.repo.has_remote
            await self._push_pending()
            return result.commit, result.problems

    def _enforce(self, result: LoadResult) -> LoadResult:
        """``result`` — or, refused by ``settings.enforce_policy``, as an invalid commit."""
        in_force = self.desired
        if (
            in_force is None
            or result.desired is None
            or not in_force.settings.enforce_policy
            or result.commit == in_force.commit
        ):
            return result
        found = self.repo.commits_between(in_force.commit, result.commit)
        commits = [
            policy.Commit(c.id, c.parents, c.author_name, c.author_email, c.message) for c in found
        ]
        made = self.repo.made_here([c.id for c in found])
        report = policy.enforced(in_force, result.desired, commits, made)
        if report.allowed:
            return result
        problem = ConfigProblem(
            "settings.enforce_policy", policy.refused_commit(report, result.commit)
        )
        return LoadResult(result.commit, None, (problem,))

    async def _push_pending(self) -> None:
        """Retry the push of history recorded here that origin lacks (a failure is logged
        and kept in ``History.status``, never raised: the pass goes on)."""
        if self.history.push and self.repo.has_remote:
            await asyncio.to_thread(self.history.push_pending)
