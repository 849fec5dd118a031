"""Push and tag payloads of GitHub, GitLab and Gitee, parsed into one ``PushEvent``.

Fields used, per provider (checked against each provider's documented payloads):

- **GitHub** ``push`` event (tags arrive as ``push`` too, with ``refs/tags/…``):
  ``ref``, ``after``, ``deleted``, ``head_commit.id``, ``head_commit.committer.name`` /
  ``.email`` (fallback ``pusher.name`` / ``.email``), ``repository.clone_url`` (fallback
  ``html_url``, ``url``).
- **GitLab** ``Push Hook`` / ``Tag Push Hook`` (``object_kind`` ``push`` / ``tag_push``):
  ``ref``, ``after``, ``checkout_sha`` (the commit, also for annotated tags), the
  matching entry of ``commits[]`` for ``author.name`` / ``.email`` (GitLab sends no
  committer; fallback ``user_name`` / ``user_email``, the pusher),
  ``project.git_http_url`` (fallback ``repository.git_http_url``, ``project.web_url``).
- **Gitee** ``Push Hook`` / ``Tag Push Hook`` (``hook_name`` ``push_hooks`` /
  ``tag_push_hooks``): ``ref``, ``after``, ``deleted``, ``head_commit.id``,
  ``head_commit.committer`` (fallback ``pusher``), ``repository.clone_url`` (fallback
  ``git_http_url``, ``html_url``, ``url``; ``project.*`` likewise).

GitHub's default content type is ``application/x-www-form-urlencoded``: the JSON payload
is then the form's ``payload`` field (the signature still covers the raw form body).
Such deliveries are read from that field; one without it is refused with a message
telling the user to pick ``application/json``.

A deleted branch or tag is still parsed (``deleted=True``, commit of forty zeros) so
the caller can record it as skipped with that reason. Events that are not pushes, and
pushes to refs other than ``refs/heads/*`` and ``refs/tags/*``, parse to ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

from reconciler import errors
from reconciler.trigger import signatures

ZERO_COMMIT = "0" * 40
_BRANCH_PREFIX = "refs/heads/"
_TAG_PREFIX = "refs/tags/"

#: Event header values that carry a push or tag payload, per provider.
PUSH_EVENTS: Mapping[signatures.Provider, frozenset[str]] = MappingProxyType(
    {
        signatures.Provider.GITHUB: frozenset({"push"}),
        signatures.Provider.GITLAB: frozenset({"Push Hook", "Tag Push Hook"}),
        signatures.Provider.GITEE: frozenset({"Push Hook", "Tag Push Hook"}),
    }
)


class RefKind(StrEnum):
    """What was pushed: a branch or a tag."""

    PUSH = "push"
    TAG = "tag"


class PayloadError(errors.QuicFlowError):
    """A push payload is not what the provider documents; ``field`` names the culprit."""

    def __init__(self, message: str, field: str = ""):
        self.field = field
        super().__init__(f"{message} (field {field!r})" if field else message)


@dataclass(frozen=True, slots=True)
class PushEvent:
    """A branch or tag push, provider-neutral."""

    provider: signatures.Provider
    kind: RefKind
    ref: str
    branch: str | None
    tag: str | None
    commit: str
    committer_name: str
    committer_email: str
    repository_url: str
    deleted: bool = False

    @property
    def name(self) -> str:
        """The branch or tag name, whichever was pushed."""
        return self.branch if self.branch is not None else self.tag or ""


def is_push_event(provider: signatures.Provider | str, event: str) -> bool:
    """Whether the event header announces a push or tag payload."""
    return event in PUSH_EVENTS[signatures.Provider(provider)]


FORM = "application/x-www-form-urlencoded"
PICK_JSON = (
    "set the webhook's Content type to application/json in the repository's webhook settings"
)


def form_payload(content_type: str, body: bytes) -> bytes:
    """The JSON of a delivery: the body itself, or a form body's ``payload`` field."""
    if content_type.split(";")[0].strip().lower() != FORM:
        return body
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError(f"the form-encoded body cannot be read; {PICK_JSON}") from None
    values = form.get("payload")
    if not values or not values[0].strip():
        raise PayloadError(f"the form-encoded body has no payload field; {PICK_JSON}", "payload")
    return values[0].encode("utf-8")


def parse_push(
    provider: signatures.Provider | str,
    event: str,
    body: bytes | str | Mapping[str, Any],
    content_type: str = "",
) -> PushEvent | None:
    """Parse a push/tag payload; None for other events and refs that are not branches/tags.

    ``content_type`` is the delivery's header: GitHub's form-encoded deliveries carry
    the payload in the ``payload`` field.
    """
    provider = signatures.Provider(provider)
    if not is_push_event(provider, event):
        return None
    if isinstance(body, bytes) and provider is signatures.Provider.GITHUB:
        body = form_payload(content_type, body)
    payload = _load(body)
    ref = _text(payload, "ref", required=True)
    if ref.startswith(_BRANCH_PREFIX):
        kind, branch, tag = RefKind.PUSH, ref[len(_BRANCH_PREFIX) :], None
    elif ref.startswith(_TAG_PREFIX):
        kind, branch, tag = RefKind.TAG, None, ref[len(_TAG_PREFIX) :]
    else:
        return None
    after = _text(payload, "after")
    deleted = payload.get("deleted") is True or after == ZERO_COMMIT
    match provider:
        case signatures.Provider.GITHUB:
            commit, name, email, url = _github(payload, after)
        case signatures.Provider.GITLAB:
            commit, name, email, url = _gitlab(payload, after)
        case signatures.Provider.GITEE:
            commit, name, email, url = _gitee(payload, after)
    if deleted:
        commit = commit or ZERO_COMMIT
    if not commit:
        raise PayloadError("push payload names no commit", "after")
    return PushEvent(provider, kind, ref, branch, tag, commit, name, email, url, deleted)


def _load(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(f"body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    return payload


def _text(mapping: Any, key: str, required: bool = False, where: str = "") -> str:
    field = f"{where}.{key}" if where else key
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    if value is None:
        if required:
            raise PayloadError("missing field", field)
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"expected a string, got {type(value).__name__}", field)
    return value


def _object(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(f"expected an object, got {type(value).__name__}", key)
    return value


def _first(mapping: Mapping[str, Any], where: str, *keys: str) -> str:
    for key in keys:
        value = _text(mapping, key, where=where)
        if value:
            return value
    return ""


def _person(mapping: Mapping[str, Any], key: str) -> tuple[str, str]:
    person = mapping.get(key)
    if not isinstance(person, Mapping):
        return "", ""
    return _text(person, "name", where=key), _text(person, "email", where=key)


def _github(payload: Mapping[str, Any], after: str) -> tuple[str, str, str, str]:
    head = _object(payload, "head_commit")
    commit = _text(head, "id", where="head_commit") or after
    name, email = _person(head, "committer")
    if not name:
        name, email = _person(payload, "pusher")
    repository = _object(payload, "repository")
    url = _first(repository, "repository", "clone_url", "html_url", "url")
    return commit, name, email, url


def _gitlab(payload: Mapping[str, Any], after: str) -> tuple[str, str, str, str]:
    # checkout_sha is the commit even for annotated tags, where `after` is the tag object.
    commit = _text(payload, "checkout_sha") or after
    name = email = ""
    commits = payload.get("commits")
    if isinstance(commits, list):
        for entry in commits:
            if isinstance(entry, Mapping) and entry.get("id") == commit:
                name, email = _person(entry, "author")
                break
    if not name:
        name, email = _text(payload, "user_name"), _text(payload, "user_email")
    project = _object(payload, "project")
    repository = _object(payload, "repository")
    url = _first(project, "project", "git_http_url", "http_url") or _first(
        repository, "repository", "git_http_url"
    )
    url = (
        url or _first(project, "project", "web_url") or _first(repository, "repository", "homepage")
    )
    return commit, name, email, url


def _gitee(payload: Mapping[str, Any], after: str) -> tuple[str, str, str, str]:
    head = _object(payload, "head_commit")
    commit = _text(head, "id", where="head_commit") or after
    name, email = _person(head, "committer")
    if not name:
        name, email = _person(payload, "pusher")
    url = ""
    for key in ("repository", "project"):
        url = url or _first(
            _object(payload, key), key, "clone_url", "git_http_url", "html_url", "url"
        )
    return commit, name, email, url
