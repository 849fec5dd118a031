"""The status page in headless Chromium (Debian ``chromium``, driven by Playwright).

A server with the real engine on the example config repo (``examples/config-repo``
committed to a real Git repo) and a few runs: the test logs in through the form, sees
the grid of projects × environments, opens a running run, follows its live log while new lines are written,
and saves screenshots to ``tests/artifacts/`` (``status-page.png`` and a phone-sized
``status-page-phone.png``). Playwright's own browser downloads are never used: the
system Chromium is launched by path. Skipped, with the reason, when either is missing.

The example's targets are agents and containers that this test does not run, so its
runs are stored through the engine's real ``RunStore`` and ``LogStore`` in the states to
render, not driven: what is tested here is how the page shows stored runs and a live log.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from api.servers import LiveServer, real_engine, serving
from gitrepos import ROOT, ConfigRepo

from reconciler.api.app import ServerSettings, create_app
from reconciler.engine.reconciling import Reconciler
from reconciler.runs import Run, RunState, Step, StepStatus, Trigger

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed"
)
if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def example_engine(
    example_repo: ConfigRepo, tmp_path: Path, age_identity: tuple[str, str]
) -> AsyncIterator[Reconciler]:
    async with real_engine(example_repo.path, tmp_path / "example-data", age_identity[0]) as engine:
        yield engine


@pytest.fixture
async def example_server(example_engine: Reconciler) -> AsyncIterator[LiveServer]:
    app = create_app(
        example_engine, ServerSettings(database=example_engine.db, run_scheduler=False)
    )
    async with serving(app) as live:
        yield live


def stored_run(
    engine: Reconciler,
    project: str,
    env: str,
    version: str,
    state: RunState = RunState.RUNNING,
    steps: tuple[tuple[str, StepStatus], ...] = (),
) -> Run:
    """A run (and its steps) written to the engine's RunStore as the engine records them."""
    assert engine.desired is not None
    environment = engine.desired.environment(project, env)
    assert environment is not None
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    run = Run(
        id=f"r-{project}-{env}",
        project=project,
        env=env,
        version=version,
        config_commit=engine.desired.commit,
        config_hash=environment.config_hash,
        trigger=Trigger.MANUAL,
        state=state,
        strategy=environment.strategy.type.value,
        created_at=now,
        started_at=now,
    )
    engine.runs.create(run)
    for key, status in steps:
        engine.runs.put_step(Step(run.id, key, status, started_at=now, attempts=1))
    return run


async def test_status_page_grid_run_and_live_log(
    example_server: LiveServer, example_engine: Reconciler
) -> None:
    engine = example_engine
    token = example_server.app.state.tokens.create("alice")
    stored_run(engine, "shop", "dev", "2.8.0-rc.1", state=RunState.SUCCEEDED)
    stored_run(
        engine,
        "shop",
        "prod",
        "2.7.1",
        state=RunState.WAITING_APPROVAL,
        steps=(("stage:build", StepStatus.SUCCEEDED), ("stage:release", StepStatus.WAITING)),
    )
    run = stored_run(
        engine,
        "catalog",
        "staging",
        "1.9.0",
        steps=(
            ("stage:release", StepStatus.RUNNING),
            ("task:release/deploy", StepStatus.RUNNING),
            ("deploy:web-1", StepStatus.SUCCEEDED),
            ("deploy:web-2", StepStatus.RUNNING),
        ),
    )
    at = "2026-11-29T10:00:00Z"
    engine.logs.append(
        run.id, [(at, "web-1", "stdout", f"pulling image step {i}") for i in range(1, 6)]
    )

    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(example_server.url + "/")
            assert page.url.startswith(example_server.url + "/login")  # not logged in yet
            await page.fill("#token", token)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#grid")
            rows = await page.locator("#grid tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.project)"
            )
            assert rows == ["billing", "catalog", "docs-site", "shop"]
            headers = await page.locator("#grid thead th").all_inner_texts()
            assert [h.lower() for h in headers] == ["project", "dev", "perf", "staging", "prod"]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

            await page.click(f'#grid a[href="/runs/{run.id}"]')
            await page.wait_for_selector("#stages")
            assert "1/2" in await page.inner_text("#progress-text")
            await page.click("#logs-link")
            await page.wait_for_selector('#log [data-seq="5"]')
            # New lines arrive over SSE while the page is open.
            engine.logs.append(run.id, [(at, "web-2", "stderr", "health check passed on web-2")])
            await page.wait_for_selector('#log [data-seq="6"]', timeout=10_000)
            assert "health check passed on web-2" in await page.inner_text("#log")
            engine.logs.close_stream(run.id)
            await page.wait_for_selector("#log-end", state="visible", timeout=10_000)
            await page.screenshot(path=str(ARTIFACTS / "status-page-log.png"), full_page=True)

            phone = await browser.new_page(viewport={"width": 390, "height": 844})
            await phone.context.add_cookies(await page.context.cookies())
            await phone.goto(example_server.url + "/?lang=zh")
            await phone.wait_for_selector("#grid")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390  # the grid stacks on a phone instead of scrolling sideways
            await phone.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
        finally:
            await browser.close()
