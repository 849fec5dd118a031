"""Push and tag payloads of GitHub, GitLab and Gitee → PushEvent.

Payloads are trimmed copies of the providers' documented examples (GitHub ``push``
webhook, GitLab ``Push Hook`` / ``Tag Push Hook``, Gitee ``push_hooks`` /
``tag_push_hooks``), keeping the fields the parser reads plus some it must ignore.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from reconciler.trigger.pushes import (
    ZERO_COMMIT,
    PayloadError,
    PushEvent,
    RefKind,
    is_push_event,
    parse_push,
)
from reconciler.trigger.signatures import Provider

SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"
TAG_OBJECT = "9e597618cb9102c993b3245f4e7c0843131ce335"

GITHUB_PUSH: dict[str, Any] = {
    "ref": "refs/heads/main",
    "before": "17c497ccc7cca9c2f735aa07e9e3813060ce9a6a",
    "after": SHA,
    "created": False,
    "deleted": False,
    "forced": False,
    "base_ref": None,
    "compare": "https://github.com/octo/shop/compare/17c497ccc7cc...1481a2de7b2a",
    "commits": [{"id": SHA, "message": "Ship it"}],
    "head_commit": {
        "id": SHA,
        "message": "Ship it",
        "timestamp": "2026-11-29T09:00:00Z",
        "author": {"name": "Ada", "email": "ada@example.com", "username": "ada"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
    },
    "pusher": {"name": "ada", "email": "ada@example.com"},
    "repository": {
        "name": "shop",
        "full_name": "octo/shop",
        "html_url": "https://github.com/octo/shop",
        "clone_url": "https://github.com/octo/shop.git",
        "url": "https://github.com/octo/shop",
    },
}

GITLAB_PUSH: dict[str, Any] = {
    "object_kind": "push",
    "event_name": "push",
    "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
    "after": SHA,
    "ref": "refs/heads/release/1.4",
    "checkout_sha": SHA,
    "user_name": "John Smith",
    "user_username": "jsmith",
    "user_email": "john@example.com",
    "project": {
        "name": "shop",
        "web_url": "https://gitlab.example.com/octo/shop",
        "git_ssh_url": "git@gitlab.example.com:octo/shop.git",
        "git_http_url": "https://gitlab.example.com/octo/shop.git",
    },
    "commits": [
        {"id": "c5feabde2d8cd023215af4d2ceeb7a64839fc428", "author": {"name": "X", "email": "x@e"}},
        {"id": SHA, "author": {"name": "Jordi Mallach", "email": "jordi@example.org"}},
    ],
    "total_commits_count": 2,
    "repository": {
        "name": "shop",
        "url": "git@gitlab.example.com:octo/shop.git",
        "homepage": "https://gitlab.example.com/octo/shop",
        "git_http_url": "https://gitlab.example.com/octo/shop.git",
    },
}

GITLAB_TAG: dict[str, Any] = {
    "object_kind": "tag_push",
    "event_name": "tag_push",
    "before": ZERO_COMMIT,
    "after": TAG_OBJECT,  # annotated tag: the tag object, not the commit
    "ref": "refs/tags/v1.4.0",
    "checkout_sha": SHA,
    "message": "Release 1.4.0",
    "user_name": "John Smith",
    "user_email": "john@example.com",
    "project": {"git_http_url": "https://gitlab.example.com/octo/shop.git"},
    "commits": [],
    "total_commits_count": 0,
}

GITEE_PUSH: dict[str, Any] = {
    "hook_name": "push_hooks",
    "password": "",
    "hook_id": 1,
    "timestamp": "1576754827988",
    "sign": "rLEHLuZRIQHuTPeXMib9Czoq9dVXO4TsQcmQQHtjXHA=",
    "ref": "refs/heads/main",
    "before": "0000000000000000000000000000000000000001",
    "after": SHA,
    "created": False,
    "deleted": False,
    "commits": [{"id": SHA, "message": "Update README.md"}],
    "head_commit": {
        "id": SHA,
        "tree_id": "db78f3594ec0683f5d857ef731df0d860f14f2b2",
        "message": "Update README.md",
        "author": {"name": "红薯", "email": "git@oschina.cn", "username": "gitee"},
        "committer": {"name": "红薯", "email": "git@oschina.cn", "username": "gitee"},
    },
    "repository": {
        "full_name": "oschina/shop",
        "html_url": "https://gitee.com/oschina/shop",
        "url": "https://gitee.com/oschina/shop",
        "clone_url": "https://gitee.com/oschina/shop.git",
        "git_http_url": "https://gitee.com/oschina/shop.git",
    },
    "project": {"clone_url": "https://gitee.com/oschina/shop.git"},
    "pusher": {"name": "gitee", "email": "pusher@oschina.cn"},
    "sender": {"login": "gitee"},
}


def changed(payload: dict[str, Any], **updates: Any) -> dict[str, Any]:
    result = copy.deepcopy(payload)
    for dotted, value in updates.items():
        target = result
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is _DELETE:
            target.pop(last, None)
        else:
            target[last] = value
    return result


_DELETE = object()


def event(
    provider: Provider,
    kind: RefKind,
    ref: str,
    commit: str,
    name: str,
    email: str,
    url: str,
    deleted: bool = False,
) -> PushEvent:
    short = ref.split("/", 2)[2]
    branch = short if kind is RefKind.PUSH else None
    tag = short if kind is RefKind.TAG else None
    return PushEvent(provider, kind, ref, branch, tag, commit, name, email, url, deleted)


GH_URL = "https://github.com/octo/shop.git"
GL_URL = "https://gitlab.example.com/octo/shop.git"
GE_URL = "https://gitee.com/oschina/shop.git"


@pytest.mark.parametrize(
    ("provider", "header", "payload", "expected"),
    [
        # GitHub
        (
            Provider.GITHUB,
            "push",
            GITHUB_PUSH,
            event(
                Provider.GITHUB,
                RefKind.PUSH,
                "refs/heads/main",
                SHA,
                "GitHub",
                "noreply@github.com",
                GH_URL,
            ),
        ),
        (
            Provider.GITHUB,
            "push",
            changed(
                GITHUB_PUSH, ref="refs/tags/v1.4.0", after=TAG_OBJECT, base_ref="refs/heads/main"
            ),
            event(
                Provider.GITHUB,
                RefKind.TAG,
                "refs/tags/v1.4.0",
                SHA,
                "GitHub",
                "noreply@github.com",
                GH_URL,
            ),
        ),
        (
            Provider.GITHUB,
            "push",
            changed(GITHUB_PUSH, ref="refs/heads/feature/a/b"),
            event(
                Provider.GITHUB,
                RefKind.PUSH,
                "refs/heads/feature/a/b",
                SHA,
                "GitHub",
                "noreply@github.com",
                GH_URL,
            ),
        ),
        (
            # branch deleted: no head_commit, after is all zeros
            Provider.GITHUB,
            "push",
            changed(GITHUB_PUSH, after=ZERO_COMMIT, deleted=True, head_commit=None, commits=[]),
            event(
                Provider.GITHUB,
                RefKind.PUSH,
                "refs/heads/main",
                ZERO_COMMIT,
                "ada",
                "ada@example.com",
                GH_URL,
                deleted=True,
            ),
        ),
        (
            Provider.GITHUB,
            "push",
            changed(GITHUB_PUSH, repository__clone_url=_DELETE),
            event(
                Provider.GITHUB,
                RefKind.PUSH,
                "refs/heads/main",
                SHA,
                "GitHub",
                "noreply@github.com",
                "https://github.com/octo/shop",
            ),
        ),
        # GitLab
        (
            Provider.GITLAB,
            "Push Hook",
            GITLAB_PUSH,
            event(
                Provider.GITLAB,
                RefKind.PUSH,
                "refs/heads/release/1.4",
                SHA,
                "Jordi Mallach",
                "jordi@example.org",
                GL_URL,
            ),
        ),
        (
            Provider.GITLAB,
            "Tag Push Hook",
            GITLAB_TAG,
            event(
                Provider.GITLAB,
                RefKind.TAG,
                "refs/tags/v1.4.0",
                SHA,
                "John Smith",
                "john@example.com",
                GL_URL,
            ),
        ),
        (
            Provider.GITLAB,
            "Push Hook",
            changed(GITLAB_PUSH, after=ZERO_COMMIT, checkout_sha=None, commits=[]),
            event(
                Provider.GITLAB,
                RefKind.PUSH,
                "refs/heads/release/1.4",
                ZERO_COMMIT,
                "John Smith",
                "john@example.com",
                GL_URL,
                deleted=True,
            ),
        ),
        (
            Provider.GITLAB,
            "Push Hook",
            changed(GITLAB_PUSH, project=_DELETE),
            event(
                Provider.GITLAB,
                RefKind.PUSH,
                "refs/heads/release/1.4",
                SHA,
                "Jordi Mallach",
                "jordi@example.org",
                GL_URL,
            ),
        ),
        # Gitee
        (
            Provider.GITEE,
            "Push Hook",
            GITEE_PUSH,
            event(
                Provider.GITEE,
                RefKind.PUSH,
                "refs/heads/main",
                SHA,
                "红薯",
                "git@oschina.cn",
                GE_URL,
            ),
        ),
        (
            Provider.GITEE,
            "Tag Push Hook",
            changed(
                GITEE_PUSH,
                hook_name="tag_push_hooks",
                ref="refs/tags/v2",
                head_commit=None,
                commits=None,
            ),
            event(
                Provider.GITEE,
                RefKind.TAG,
                "refs/tags/v2",
                SHA,
                "gitee",
                "pusher@oschina.cn",
                GE_URL,
            ),
        ),
        (
            Provider.GITEE,
            "Push Hook",
            changed(GITEE_PUSH, repository=None),
            event(
                Provider.GITEE,
                RefKind.PUSH,
                "refs/heads/main",
                SHA,
                "红薯",
                "git@oschina.cn",
                GE_URL,
            ),
        ),
        (
            Provider.GITEE,
            "Push Hook",
            changed(GITEE_PUSH, deleted=True, after=ZERO_COMMIT, head_commit=None),
            event(
                Provider.GITEE,
                RefKind.PUSH,
                "refs/heads/main",
                ZERO_COMMIT,
                "gitee",
                "pusher@oschina.cn",
                GE_URL,
                deleted=True,
            ),
        ),
    ],
)
def test_parse_push(
    provider: Provider, header: str, payload: dict[str, Any], expected: PushEvent
) -> None:
    body = json.dumps(payload).encode()
    assert parse_push(provider, header, body) == expected
    # already-decoded JSON and text bodies parse the same
    assert parse_push(provider.value, header, payload) == expected
    assert parse_push(provider, header, body.decode()) == expected


def test_name_is_branch_or_tag() -> None:
    push = parse_push(Provider.GITHUB, "push", GITHUB_PUSH)
    tag = parse_push(Provider.GITLAB, "Tag Push Hook", GITLAB_TAG)
    assert push is not None and push.name == "main"
    assert tag is not None and tag.name == "v1.4.0"


@pytest.mark.parametrize(
    ("provider", "header", "payload"),
    [
        (Provider.GITHUB, "ping", {"zen": "Keep it logically awesome."}),
        (Provider.GITHUB, "create", {"ref": "v1", "ref_type": "tag"}),
        (Provider.GITHUB, "pull_request", GITHUB_PUSH),
        (Provider.GITLAB, "Merge Request Hook", GITLAB_PUSH),
        (Provider.GITLAB, "System Hook", GITLAB_PUSH),
        (Provider.GITEE, "Merge Request Hook", GITEE_PUSH),
        (Provider.GITHUB, "push", changed(GITHUB_PUSH, ref="refs/notes/commits")),
        (Provider.GITLAB, "Push Hook", changed(GITLAB_PUSH, ref="refs/merge-requests/1/head")),
    ],
)
def test_not_a_branch_or_tag_push(provider: Provider, header: str, payload: dict[str, Any]) -> None:
    assert parse_push(provider, header, json.dumps(payload).encode()) is None


@pytest.mark.parametrize(
    ("provider", "header", "event_type"),
    [
        (Provider.GITHUB, "push", True),
        (Provider.GITHUB, "Push Hook", False),
        (Provider.GITLAB, "Push Hook", True),
        (Provider.GITLAB, "Tag Push Hook", True),
        (Provider.GITLAB, "push", False),
        (Provider.GITEE, "Push Hook", True),
        (Provider.GITEE, "Tag Push Hook", True),
        (Provider.GITEE, "Issue Hook", False),
    ],
)
def test_is_push_event(provider: Provider, header: str, event_type: bool) -> None:
    assert is_push_event(provider, header) is event_type


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b"{}", "missing field (field 'ref')"),
        (
            json.dumps(changed(GITHUB_PUSH, ref=5)).encode(),
            "expected a string, got int (field 'ref')",
        ),
        (
            json.dumps(changed(GITHUB_PUSH, head_commit__id=7)).encode(),
            "expected a string, got int (field 'head_commit.id')",
        ),
        (
            json.dumps(changed(GITHUB_PUSH, head_commit="x")).encode(),
            "expected an object, got str (field 'head_commit')",
        ),
        (
            json.dumps(changed(GITHUB_PUSH, head_commit=None, after=None)).encode(),
            "push payload names no commit (field 'after')",
        ),
    ],
)
def test_malformed_payloads(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_push(Provider.GITHUB, "push", body)
    assert message in str(caught.value)
