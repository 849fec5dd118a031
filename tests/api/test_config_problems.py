"""Config errors are visible where operators look (issue 17, item 6).

The real engine on a real config repo, behind real uvicorn. A commit that breaks the
config used to show only "the newest config commit has problems" on the page, with the
problems in a log line repeated at every poll. Now ``GET /api/release/config`` and the
page show each problem as ``path:line:col: message``, with the commit and its author,
and the log says it once per new commit.
"""

from __future__ import annotations

import logging

import pytest
from api.servers import LiveServer
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler

BROKEN = 'version: "2.0"\ntargets:\n  - {local: dev-1}\nstrategy: {type: sideways}\n'


async def test_a_refused_commit_s_problems_its_commit_and_author_are_shown_and_logged_once(
    server: LiveServer,
    engine: Reconciler,
    api_repo: ConfigRepo,
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = engine.desired
    assert good is not None
    bad = api_repo.commit(
        {"projects/app/environments/dev.yaml": BROKEN},
        message="dev 2.0, sideways",
        author=("Mallory Typo", "mallory@example.com"),
    )
    with caplog.at_level(logging.WARNING, logger="reconciler.engine.refreshing"):
        for _ in range(3):
            await engine.refresh()
    refused = [r for r in caplog.records if "is invalid" in r.getMessage()]
    assert len(refused) == 1  # once per new commit, not once per poll
    logged = refused[0].getMessage()
    assert bad[:10] in logged and "Mallory Typo <mallory@example.com>" in logged

    async with server.client(tokens["vic"]) as client:
        answer = await client.get("/api/release/config")
        page = await client.get("/")
    async with server.client() as anonymous:
        unauthenticated = await anonymous.get("/api/release/config")
    assert answer.status_code == 200
    config = answer.json()
    assert config["in_force"] == good.commit
    assert config["newest"] == {
        "commit": bad,
        "valid": False,
        "author": "Mallory Typo <mallory@example.com>",
        "summary": "dev 2.0, sideways",
    }
    texts = [p["text"] for p in config["problems"]]
    assert texts and all(t.startswith("projects/app/environments/dev.yaml:4:") for t in texts)
    assert "sideways" in texts[0]
    assert unauthenticated.status_code == 401

    html = page.text
    assert bad[:10] in html and "Mallory Typo &lt;mallory@example.com&gt;" in html
    assert "projects/app/environments/dev.yaml:4:" in html

    # Fixed: the notice goes, the API says so.
    api_repo.commit({"projects/app/environments/dev.yaml": BROKEN.replace("sideways", "rolling")})
    await engine.refresh()
    async with server.client(tokens["vic"]) as client:
        fixed = (await client.get("/api/release/config")).json()
    assert fixed["newest"]["valid"] is True and fixed["problems"] == []
