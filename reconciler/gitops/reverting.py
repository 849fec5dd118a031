"""Rollback by revert: the commit that sets an environment's version back in Git.

Git stays the truth: rolling back commits the old version into the environment file,
with a ``Quicflow-Rollback: project/env`` trailer and who asked (``Quicflow-Actor``),
and the next pass deploys it. The pass reads the trailers of the head commit
(``rollback_of``) so that only the named environments run with trigger ``rollback``,
as the user who asked; an emergency rollback an owner forced past a closed release
window says so with ``Quicflow-Force: project/env`` and runs at once. (Whoever may
push to the branch can write these trailers — and could as well remove the window.) The text change and the message are pure
functions; ``commit_revert`` writes through ``reconciler.gitops.bumping`` like every
other version bump (blocking: call it in a thread).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.gitops import bumping, model
from reconciler.gitops.repository import GitRepository

ROLLBACK_TRAILER = "Quicflow-Rollback:"
FORCE_TRAILER = "Quicflow-Force:"
ACTOR_TRAILER = "Quicflow-Actor:"


@dataclass(frozen=True, slots=True)
class Rollbacks:
    """What a head commit's rollback trailers ask of the pass."""

    envs: frozenset[str] = frozenset()  # project/env rolled back by this commit
    forced: frozenset[str] = frozenset()  # of those, forced past a closed release window
    actor: str = ""  # who asked


def revert_message(env_key: str, version: str, who: str, force: bool = False) -> str:
    """The message of the commit rolling ``env_key`` (``project/env``) back to ``version``."""
    trailers = [f"{ROLLBACK_TRAILER} {env_key}", f"{ACTOR_TRAILER} {' '.join(who.split())}"]
    if force:
        trailers.append(f"{FORCE_TRAILER} {env_key}")
    forced = " It is forced past a closed release window." if force else ""
    return (
        f"Roll back {env_key} to {version}\n\nRequested by {who}.{forced}\n\n"
        + "\n".join(trailers)
        + "\n"
    )


def rollback_of(message: str) -> Rollbacks:
    """What a commit message's rollback trailers say."""
    envs, forced, actor = set(), set(), ""
    for line in message.splitlines():
        if line.startswith(ROLLBACK_TRAILER):
            envs.add(line.removeprefix(ROLLBACK_TRAILER).strip())
        elif line.startswith(FORCE_TRAILER):
            forced.add(line.removeprefix(FORCE_TRAILER).strip())
        elif line.startswith(ACTOR_TRAILER):
            actor = line.removeprefix(ACTOR_TRAILER).strip()
    return Rollbacks(frozenset(envs), frozenset(forced & envs), actor)


def rolled_back(message: str) -> frozenset[str]:
    """The environments (``project/env``) a commit message's rollback trailers name."""
    return frozenset(
        line.removeprefix(ROLLBACK_TRAILER).strip()
        for line in message.splitlines()
        if line.startswith(ROLLBACK_TRAILER)
    )


def commit_revert(
    repo: GitRepository,
    branch: str,
    env: model.Environment,
    version: str,
    who: str,
    force: bool = False,
) -> str:
    """Commit ``env``'s file at ``version`` on ``branch`` (pushed when there is a remote)."""
    return bumping.commit_version(
        repo, branch, env, version, revert_message(env.key, version, who, force)
    )
