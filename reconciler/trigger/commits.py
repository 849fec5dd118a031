"""Does the pushed commit exist in the project's app repo? Asked before a delivery acts.

Gitee signs no body (its signature covers the timestamp only) and GitLab sends a fixed
token: whoever captured one delivery's headers could, within the timestamp's skew, send
any body with them. For providers whose deliveries do not sign the body
(``UNSIGNED_BODIES``), the commit a push names is looked up in the project's app repo
(``repo:`` in ``project.yaml``) before a build or deploy starts: a forged body naming a
commit the repo does not have is refused. The app repo is mirrored under
``DATA/app-repos`` (as the builder does) and fetched when the commit is not there yet;
a tag push must name the commit the tag points at.

Blocking Git work runs in a thread; credentials for private repos are the project's
``repo.credential``, read through the credential manager (an audited use).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler import errors
from reconciler.credential.manager import CredentialManager
from reconciler.gitops import model
from reconciler.gitops.repository import GitRepository
from reconciler.trigger import signatures

#: Providers whose proof of origin does not cover the body.
UNSIGNED_BODIES = frozenset({signatures.Provider.GITEE})


class AppRepoCommits:
    """Looks pushed commits up in app repos mirrored under ``cache_dir``."""

    def __init__(self, cache_dir: Path, credentials: CredentialManager | None = None):
        self.cache_dir = cache_dir
        self.credentials = credentials

    async def verify(self, project: model.Project, commit: str, tag: str | None) -> str:
        """'' when ``commit`` (and ``tag``, if any) is in the app repo; else why it is refused.

        A project without ``repo:`` cannot be checked: the answer says so (not a refusal),
        so the trigger record shows that the delivery's body was taken on trust.
        """
        if project.repo is None:
            return ""
        return await asyncio.to_thread(self._verify, project, project.repo, commit, tag)

    def _verify(
        self, project: model.Project, repo: model.Repo, commit: str, tag: str | None
    ) -> str:
        try:
            git = self._open(project, repo)
            found = _resolve(git, commit)
            if found is None:
                git.fetch()
                found = _resolve(git, commit)
            if found is None:
                return f"commit {commit} does not exist in {repo.url}"
            if tag is not None and _resolve(git, f"refs/tags/{tag}") != found:
                return f"tag {tag!r} of {repo.url} does not point at commit {commit}"
        except (errors.QuicFlowError, KeyError, OSError) as error:
            return f"the app repo {repo.url} cannot be read to check commit {commit}: {error}"
        return ""

    def _open(self, project: model.Project, repo: model.Repo) -> GitRepository:
        token = username = None
        if repo.credential and self.credentials is not None:
            credential = self.credentials.get(repo.credential, project.name, "webhook:commit-check")
            username = credential.username
            token = credential.token or credential.password
        return GitRepository.open(
            repo.url, cache_dir=self.cache_dir, token=token, username=username
        )


def _resolve(git: GitRepository, rev: str) -> str | None:
    try:
        return git.resolve(rev)
    except errors.QuicFlowError:
        return None
