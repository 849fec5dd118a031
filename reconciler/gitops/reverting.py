"""Rollback by revert: the commit that sets an environment's version back in Git.

Git stays the truth: rolling back commits the old version into the environment file,
with a ``Quicflow-Rollback: project/env`` trailer, and the next pass deploys it. The
pass reads the trailer of the head commit (``rolled_back``) so that only the named
environments run with trigger ``rollback``. The text change and the message are pure
functions; ``commit_revert`` writes through ``reconciler.gitops.bumping`` like every
other version bump (blocking: call it in a thread).
"""

from __future__ import annotations

from reconciler.gitops import bumping, model
from reconciler.gitops.repository import GitRepository

ROLLBACK_TRAILER = "Quicflow-Rollback:"


def revert_message(env_key: str, version: str, who: str) -> str:
    """The message of the commit rolling ``env_key`` (``project/env``) back to ``version``."""
    return (
        f"Roll back {env_key} to {version}\n\nRequested by {who}.\n\n{ROLLBACK_TRAILER} {env_key}\n"
    )


def rolled_back(message: str) -> frozenset[str]:
    """The environments (``project/env``) a commit message's rollback trailers name."""
    return frozenset(
        line.removeprefix(ROLLBACK_TRAILER).strip()
        for line in message.splitlines()
        if line.startswith(ROLLBACK_TRAILER)
    )


def commit_revert(
    repo: GitRepository, branch: str, env: model.Environment, version: str, who: str
) -> str:
    """Commit ``env``'s file at ``version`` on ``branch`` (pushed when there is a remote)."""
    return bumping.commit_version(repo, branch, env, version, revert_message(env.key, version, who))
