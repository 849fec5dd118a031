"""The versioned webhook payload and the Feishu custom-bot message shapes."""

from __future__ import annotations

import pytest

from reconciler.alert import payloads
from reconciler.events import Event, EventType
from reconciler.rules import templates


def _variables(**extra: object) -> dict:
    event = Event(
        EventType.RUN_FAILED,
        "2026-11-29T10:00:00Z",
        run_id="r-7",
        project="shop",
        env="prod",
        version="1.4.2",
        stage="release",
        task="deploy",
        target="web-1",
        error="exit 1",
        data={"trigger": "webhook", "committer": "alice"},
    )
    return templates.variables(event, public_url="https://qf.example.com", **extra)


def test_webhook_body_is_schema_v1_with_every_documented_field() -> None:
    body = payloads.webhook_body(
        "key-1", payloads.KIND_EVENT, _variables(), text="hello", data={"x": 1}
    )
    assert body == {
        "schema": "quicflow.notification/v1",
        "schema_version": 1,
        "id": "key-1",
        "kind": "event",
        "event": "run_failed",
        "at": "2026-11-29T10:00:00Z",
        "project": "shop",
        "environment": "prod",
        "version": "1.4.2",
        "stage": "release",
        "task": "deploy",
        "target": "web-1",
        "status": "failed",
        "error": "exit 1",
        "severity": None,
        "trigger": "webhook",
        "committer": "alice",
        "run": {
            "id": "r-7",
            "state": "failed",
            "trigger": "webhook",
            "url": "https://qf.example.com/runs/r-7",
        },
        "links": {
            "run": "https://qf.example.com/runs/r-7",
            "status_page": "https://qf.example.com/",
        },
        "title": "shop/prod 1.4.2: failed",
        "text": "hello",
        "alert": None,
        "entries": [],
        "data": {"x": 1},
    }


def test_alert_body_carries_the_alert_and_its_title() -> None:
    alert = {
        "id": 3,
        "rule": "prod-deploy-failed",
        "title": "deploy failed: shop/prod 1.4.2",
        "severity": "critical",
        "count": 1,
    }
    body = payloads.webhook_body(
        "k", payloads.KIND_ALERT, _variables(severity="critical", alert=alert), text="t"
    )
    assert body["kind"] == "alert"
    assert body["severity"] == "critical"
    assert body["alert"] == alert
    assert body["title"] == "deploy failed: shop/prod 1.4.2"


def test_feishu_text() -> None:
    assert payloads.feishu_body("text", title="T", text="line 1\nline 2") == {
        "msg_type": "text",
        "content": {"text": "line 1\nline 2"},
    }
    assert payloads.feishu_body(None, title="T", text="x")["msg_type"] == "text"


def test_feishu_post_has_a_title_lines_and_the_link() -> None:
    body = payloads.feishu_body("post", title="T", text="a\n\nb", link="https://x/runs/1")
    post = body["content"]["post"]["zh_cn"]
    assert body["msg_type"] == "post"
    assert post["title"] == "T"
    assert post["content"] == [
        [{"tag": "text", "text": "a"}],
        [{"tag": "text", "text": "b"}],
        [{"tag": "a", "text": "https://x/runs/1", "href": "https://x/runs/1"}],
    ]


def test_feishu_interactive_card_is_coloured_by_severity_with_a_button() -> None:
    body = payloads.feishu_body(
        "interactive", title="T", text="**x**", link="https://x/runs/1", severity="critical"
    )
    card = body["card"]
    assert body["msg_type"] == "interactive"
    assert card["header"] == {"title": {"tag": "plain_text", "content": "T"}, "template": "red"}
    assert card["elements"][0] == {"tag": "div", "text": {"tag": "lark_md", "content": "**x**"}}
    assert card["elements"][1]["actions"][0]["url"] == "https://x/runs/1"


def test_unknown_feishu_format_is_refused() -> None:
    with pytest.raises(ValueError, match="msg_type"):
        payloads.feishu_body("markdown", title="T", text="x")
