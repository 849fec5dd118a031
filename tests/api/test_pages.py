"""The status page over real HTTP, without a browser: grid, run, logs, history, agents, languages.

The runs shown are the real engine's, on the gated config: a prod run waiting for its
approval, a dev run whose deploy script is running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

import pytest
from api import configs, driving
from api.servers import LiveServer, serving

from reconciler.api.app import ServerSettings, create_app
from reconciler.engine.reconciling import Reconciler
from reconciler.runs import StepStatus


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


async def test_grid_shows_projects_by_environment(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE)
    async with server.client(tokens["vic"]) as client:
        page = await client.get("/")
        chinese = await client.get("/", params={"lang": "zh"})
    assert page.status_code == 200
    html = page.text
    assert 'data-project="app"' in html and 'data-project="other"' not in html
    assert html.index(">dev<") < html.index(">prod<")  # dev → prod, as a release travels
    assert f'href="/runs/{run.id}"' in html and "waiting approval" in html
    assert "never deployed" in html
    assert "nonce-" in page.headers["content-security-policy"]
    assert "总览" in chinese.text and 'href="/runs/' + run.id + '?lang=zh"' in chinese.text


async def test_run_and_log_pages_render_without_javascript(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    # Approved, then the canary's first step: dev-1's deploy script prints markup and sleeps.
    run = await driving.running(engine, "dev", "1.0.1-slow")
    steps = {s.key: s.status for s in engine.runs.steps(run.id)}
    assert steps["stage:release"] is steps["deploy:dev-1"] is StepStatus.RUNNING
    last_seq = engine.logs.read(run.id)[-1].seq
    async with server.client(tokens["dev"]) as client, server.client(tokens["nora"]) as outsider:
        run_page = await client.get(f"/runs/{run.id}")
        log_page = await client.get(f"/runs/{run.id}/logs")
        hidden = await outsider.get(f"/runs/{run.id}")
        history = await client.get("/history")
        agents = await client.get("/agents")
    assert run_page.status_code == 200
    assert "release" in run_page.text and "deploy:dev-1" in run_page.text
    assert log_page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt; ok" in log_page.text  # escaped, never markup
    assert f'data-after="{last_seq}"' in log_page.text
    assert hidden.status_code == 404
    assert history.status_code == 200 and "No deployment has been recorded yet." in history.text
    assert agents.status_code == 200 and "web-1" in agents.text and "No agent hub" in agents.text


async def test_run_page_progress_counts_targets(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.running(engine, "dev", "1.0.1-slow")
    async with server.client(tokens["dev"]) as client:
        run_page = await client.get(f"/runs/{run.id}")
    assert "0/1" in run_page.text


async def test_lifespan_runs_the_scheduler(engine: Reconciler, settings: ServerSettings) -> None:
    app = create_app(engine, replace(settings, run_scheduler=True))
    async with serving(app):
        for _ in range(100):
            if app.state.scheduler.store.all():
                break
            await asyncio.sleep(0.02)
    assert set(app.state.scheduler.store.all()) == {"app.nightly", "app.hourly-skip"}
