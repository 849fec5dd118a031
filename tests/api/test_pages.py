"""The status page over real HTTP, without a browser: grid, run, logs, history, agents, languages."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from api.recording import RecordingEngine
from api.servers import LiveServer, serving

from reconciler.api.app import ServerSettings, create_app
from reconciler.runs import RunState, StepStatus


async def test_grid_shows_projects_by_environment(
    server: LiveServer, engine: RecordingEngine, tokens: dict[str, str]
) -> None:
    run = engine.add_run("app", "prod", "1.0.0", state=RunState.WAITING_APPROVAL)
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
    server: LiveServer, engine: RecordingEngine, tokens: dict[str, str]
) -> None:
    run = engine.add_run(
        "app",
        "dev",
        "1.0.1",
        steps=(
            ("stage:release", StepStatus.RUNNING),
            ("task:release/deploy", StepStatus.SUCCEEDED),
            ("deploy:dev-1", StepStatus.RUNNING),
        ),
    )
    engine.logs.append(
        run.id, [("2026-11-29T10:00:00Z", "dev-1", "stdout", "<script>alert(1)</script> ok")]
    )
    async with server.client(tokens["dev"]) as client, server.client(tokens["nora"]) as outsider:
        run_page = await client.get(f"/runs/{run.id}")
        log_page = await client.get(f"/runs/{run.id}/logs")
        hidden = await outsider.get(f"/runs/{run.id}")
        history = await client.get("/history")
        agents = await client.get("/agents")
    assert run_page.status_code == 200
    assert "release" in run_page.text and "deploy:dev-1" in run_page.text and "0/1" in run_page.text
    assert log_page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt; ok" in log_page.text  # escaped, never markup
    assert 'data-after="1"' in log_page.text
    assert hidden.status_code == 404
    assert history.status_code == 200 and "No deployment has been recorded yet." in history.text
    assert agents.status_code == 200 and "web-1" in agents.text and "No agent hub" in agents.text


async def test_lifespan_runs_the_scheduler(
    engine: RecordingEngine, settings: ServerSettings
) -> None:
    app = create_app(engine, replace(settings, run_scheduler=True))
    async with serving(app):
        for _ in range(100):
            if app.state.scheduler.store.all():
                break
            await asyncio.sleep(0.02)
    assert set(app.state.scheduler.store.all()) == {"app.nightly", "app.hourly-skip"}
