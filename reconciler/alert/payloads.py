"""The bodies QUIC-Flow sends: the versioned webhook JSON and Feishu custom-bot messages.

Pure: no I/O. The webhook payload is a public contract, documented field by field in
``docs/notifications.md``; fields are only ever added within a version, and a change
that removes or redefines a field bumps ``VERSION`` (and ``SCHEMA``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VERSION = 1
SCHEMA = f"quicflow.notification/v{VERSION}"

KIND_EVENT = "event"
KIND_ALERT = "alert"
KIND_DIGEST = "digest"

FEISHU_FORMATS = ("text", "post", "interactive")
DEFAULT_FEISHU_FORMAT = "text"

# Feishu card header colours by severity.
_CARD_COLOURS = {"critical": "red", "warning": "orange", "info": "blue"}


def title(variables: Mapping[str, Any]) -> str:
    """A one-line title: the alert's title, or ``project/env version: status``."""
    alert = variables.get("alert") or {}
    if alert.get("title"):
        return str(alert["title"])
    where = variables.get("project") or "quicflow"
    if variables.get("env"):
        where += f"/{variables['env']}"
    if variables.get("version"):
        where += f" {variables['version']}"
    return f"{where}: {variables.get('status', '')}".rstrip(": ")


def webhook_body(
    key: str,
    kind: str,
    variables: Mapping[str, Any],
    *,
    text: str,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The webhook JSON (schema ``quicflow.notification/v1``) for one notification."""
    alert = variables.get("alert") or None
    return {
        "schema": SCHEMA,
        "schema_version": VERSION,
        "id": key,
        "kind": kind,
        "event": variables.get("event", ""),
        "at": variables.get("at", ""),
        "project": variables.get("project", ""),
        "environment": variables.get("env", ""),
        "version": variables.get("version", ""),
        "stage": variables.get("stage", ""),
        "task": variables.get("task", ""),
        "target": variables.get("target", ""),
        "status": variables.get("status", ""),
        "error": variables.get("error", ""),
        "severity": variables.get("severity", "") or None,
        "trigger": variables.get("trigger", ""),
        "committer": variables.get("committer", ""),
        "run": dict(variables.get("run") or {}),
        "links": dict(variables.get("links") or {}),
        "title": title(variables),
        "text": text,
        "alert": dict(alert) if alert else None,
        "entries": [dict(e) for e in variables.get("entries") or []],
        "data": dict(data or {}),
    }


def feishu_body(
    msg_type: str | None,
    *,
    title: str,
    text: str,
    link: str = "",
    severity: str = "",
) -> dict[str, Any]:
    """A Feishu custom-bot message of ``msg_type`` text, post or interactive (unsigned)."""
    kind = msg_type or DEFAULT_FEISHU_FORMAT
    if kind == "text":
        return {"msg_type": "text", "content": {"text": text}}
    if kind == "post":
        lines: list[list[dict[str, str]]] = [
            [{"tag": "text", "text": line}] for line in text.splitlines() if line.strip()
        ]
        if link and link not in text:
            lines.append([{"tag": "a", "text": link, "href": link}])
        return {
            "msg_type": "post",
            "content": {"post": {"zh_cn": {"title": title, "content": lines}}},
        }
    if kind == "interactive":
        elements: list[dict[str, Any]] = [
            {"tag": "div", "text": {"tag": "lark_md", "content": text}}
        ]
        if link:
            elements.append(
                {
                    "tag": "action",
                    "actions": [
                        {
                            "tag": "button",
                            "text": {"tag": "plain_text", "content": "Open"},
                            "url": link,
                            "type": "default",
                        }
                    ],
                }
            )
        return {
            "msg_type": "interactive",
            "card": {
                "config": {"wide_screen_mode": True},
                "header": {
                    "title": {"tag": "plain_text", "content": title},
                    "template": _CARD_COLOURS.get(severity, "turquoise"),
                },
                "elements": elements,
            },
        }
    raise ValueError(f"unknown Feishu msg_type {kind!r}; expected one of {FEISHU_FORMATS}")
