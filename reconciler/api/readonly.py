"""Which API resources are changed by Git commits, and what a refused write says.

Configuration lives in the config repo: projects, environments, members, webhooks,
schedules, alert rules and credentials are files there, changed by a reviewed commit
(``quicflow plan`` says what it will do before merge). The API shows them and never
writes them, so a POST, PUT, PATCH or DELETE on one of them is answered 405 with the
file to commit instead — not a bare "method not allowed".

``hint(path)`` is pure: it maps an API path onto that message (``""`` for paths that
are not configuration).
"""

from __future__ import annotations

import re

from reconciler.api import auth

_P = re.escape(auth.API_PREFIX)
_NAME = r"([^/]+)"

#: (path pattern, message with {0}, {1} … for the captured names), first match wins.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(f"^{_P}{pattern}/?$"), message)
    for pattern, message in (
        (
            f"/projects/{_NAME}/webhooks(?:/.*)?",
            "webhooks are configuration: create webhooks by committing to "
            "projects/{0}/project.yaml (triggers.webhooks)",
        ),
        (
            f"/projects/{_NAME}/schedules(?:/.*)?",
            "schedules are configuration: create schedules by committing to "
            "projects/{0}/project.yaml (triggers.schedules)",
        ),
        (
            f"/projects/{_NAME}/members(?:/.*)?",
            "members are configuration: change them by committing to "
            "projects/{0}/project.yaml (members)",
        ),
        (
            f"/projects/{_NAME}/environments/{_NAME}",
            "environments are configuration: change one by committing to "
            "projects/{0}/environments/{1}.yaml (a deploy is POST …/deploy)",
        ),
        (
            f"/projects/{_NAME}/environments",
            "environments are configuration: add one by committing "
            "projects/{0}/environments/<env>.yaml",
        ),
        (
            f"/projects/{_NAME}",
            "projects are configuration: change one by committing to projects/{0}/project.yaml",
        ),
        (
            "/projects",
            "projects are configuration: create one by committing projects/<p>/project.yaml",
        ),
        (
            "/credentials(?:/.*)?",
            "credentials are configuration: add or change them by committing the "
            "SOPS-encrypted credentials.sops.yaml (or projects/<p>/credentials.sops.yaml)",
        ),
        (
            "/alerts/rules(?:/.*)?",
            "alert rules are configuration: change them by committing to quicflow.yaml "
            "(alert_rules) or projects/<p>/project.yaml",
        ),
        (
            "/(?:triggers|schedules)(?:/.*)?",
            "triggers are configuration: create them by committing to "
            "projects/<p>/project.yaml (triggers)",
        ),
    )
)


def hint(path: str) -> str:
    """What to commit instead of writing to ``path`` ('' when it is not configuration)."""
    for pattern, message in _RULES:
        match = pattern.match(path)
        if match:
            return message.format(*match.groups())
    return ""
