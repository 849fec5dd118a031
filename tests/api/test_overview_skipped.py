"""Environments this reconciler cannot run say so on the overview, and why.

The real engine and server on the API config plus ``app/edge``, whose target is the
declared agent ``web-1``; no QUIC hub runs in the test's engine, so the reconcile loop
reports it skipped. The overview (JSON and page) must not show it as merely "never
deployed": it names the reason, while the runnable environments carry none.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from api import configs
from api.servers import LiveServer

EDGE = 'version: "1.0.0"\ntargets:\n  - {agent: web-1}\n'


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return {**configs.API_FILES, "projects/app/environments/edge.yaml": EDGE}


async def test_an_environment_that_cannot_run_here_says_why(
    server: LiveServer, tokens: dict[str, str]
) -> None:
    async with server.client(tokens["vic"]) as client:
        (app,) = (await client.get("/api/release/projects")).json()["items"]
        html = (await client.get("/")).text
        zh = (await client.get("/", params={"lang": "zh"})).text
    envs = {e["name"]: e for e in app["environments"]}
    why = "its targets are agents and no QUIC hub runs in this process (use 'quicflow serve')"
    assert envs["edge"]["skipped"] == why
    assert envs["edge"]["deployed_version"] is None
    assert envs["dev"]["skipped"] is None and envs["prod"]["skipped"] is None
    # The page shows the badge with the reason beside it, once: only edge is skipped.
    assert html.count('class="small muted skip-reason"') == 1
    reason = why.replace("'", "&#39;")
    assert f'<span class="small muted skip-reason">{reason}</span>' in html
    assert ">已跳过</span>" in zh
