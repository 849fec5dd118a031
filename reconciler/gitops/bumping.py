"""Version bumps: the commits that set an environment's ``version:`` in the config repo.

Whatever asks for a version outside a pull request — a webhook or API deploy, image
automation after a build (``auto_update``), a rollback by revert — is recorded the
GitOps way: one commit that changes the top-level ``version:`` line of the environment
file, with trailers naming what asked (``Quicflow-Trigger``), through which webhook
and delivery, and who (``Quicflow-Actor``), pushed when the repo has a remote. A bump
exists only if the remote took it (``GitRepository.update_file_on_branch`` with
``push``), so a refused push leaves nothing behind for the next fetch to undo.

The text edit, the messages and the trailer parsing are pure; ``commit_version``
writes through ``GitRepository`` (blocking: call it in a thread).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from reconciler.errors import PermanentError
from reconciler.gitops import model
from reconciler.gitops.repository import GitRepository, Identity

DEPLOY_TRAILER = "Quicflow-Deploy"
TRIGGER_TRAILER = "Quicflow-Trigger"
WEBHOOK_TRAILER = "Quicflow-Webhook"
DELIVERY_TRAILER = "Quicflow-Delivery"
ACTOR_TRAILER = "Quicflow-Actor"
BUILD_TRAILER = "Quicflow-Build"

_VERSION_LINE = re.compile(r"(?m)^version:.*$")
_TRAILER_LINE = re.compile(r"^(Quicflow-[A-Za-z-]+):\s*(.*)$")


class NoVersionLine(PermanentError):
    """The environment file has no top-level ``version:`` line that a commit could change."""


def with_version(text: str, version: str) -> str | None:
    """``text`` of an environment file with its top-level version set, or None if it has none."""
    # A JSON string is a YAML double-quoted scalar: a tag name with quotes or backslashes
    # stays one value and cannot break the file.
    line = f"version: {json.dumps(version)}"
    new_text, count = _VERSION_LINE.subn(lambda _match: line, text, count=1)
    return new_text if count else None


def _one_line(value: str) -> str:
    # Trailer values come from payloads (a committer's name): one line, so none can forge
    # another trailer.
    return " ".join(value.split())


def message(subject: str, body: str, trailers: Iterable[tuple[str, str]]) -> str:
    """A commit message: subject, optional body, then the trailers that have a value."""
    lines = [_one_line(subject), ""]
    if body:
        lines += [body.strip(), ""]
    lines += [f"{name}: {_one_line(value)}" for name, value in trailers if value]
    return "\n".join(lines) + "\n"


def deploy_message(
    env_key: str,
    version: str,
    trigger: str,
    actor: str,
    *,
    webhook: str = "",
    delivery: str = "",
) -> str:
    """The message of the commit that makes a webhook or API deploy of ``version`` stick."""
    via = f"webhook {webhook}" if webhook else f"a {trigger} deploy"
    body = f"Requested by {via}{f' (delivery {delivery})' if delivery else ''}"
    body = _one_line(body + (f" by {actor}." if actor else "."))
    return message(
        f"Deploy {version} to {env_key}",
        body,
        [
            (DEPLOY_TRAILER, env_key),
            (TRIGGER_TRAILER, trigger),
            (WEBHOOK_TRAILER, webhook),
            (DELIVERY_TRAILER, delivery),
            (ACTOR_TRAILER, actor),
        ],
    )


def build_message(version: str, env_key: str, build_id: str) -> str:
    """The message of an image-automation bump after build ``build_id``."""
    return message(
        f"Deploy {version} to {env_key} (build {build_id})",
        "",
        [(DEPLOY_TRAILER, env_key), (TRIGGER_TRAILER, "build"), (BUILD_TRAILER, build_id)],
    )


def trailers(text: str) -> Mapping[str, tuple[str, ...]]:
    """The ``Quicflow-*`` trailers of a commit message (name → values, in order).

    As Git reads trailers: from the message's last paragraph only.
    """
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    found: dict[str, list[str]] = {}
    for line in (paragraphs[-1] if len(paragraphs) > 1 else "").splitlines():
        match = _TRAILER_LINE.match(line.strip())
        if match:
            found.setdefault(match.group(1), []).append(match.group(2).strip())
    return {name: tuple(values) for name, values in found.items()}


def commit_version(
    repo: GitRepository,
    branch: str,
    env: model.Environment,
    version: str,
    commit_message: str,
    identity: Identity | None = None,
) -> str:
    """Commit ``env``'s file at ``version`` on ``branch`` and push it (when there is a remote).

    ``NoVersionLine`` when the file has no top-level ``version:`` line; ``SourceError``
    when the remote refused the push (nothing is left committed then).
    """
    path = env.source.path
    new_text = with_version(repo.blob(env.source.blob).decode(), version)
    if new_text is None:
        raise NoVersionLine(f"{path}: no top-level 'version:' line to change")
    return repo.update_file_on_branch(
        branch, path, new_text.encode(), commit_message, identity or Identity(), push=True
    )
