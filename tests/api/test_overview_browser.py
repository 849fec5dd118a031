"""The overview in headless Chromium (Debian ``chromium``, driven by Playwright).

The real engine and server on the gated API config: a prod run waits at its approval and
a dev run ended failed. The test logs in through the form and checks that the overview
opens with both in its attention list; approves the prod run through the engine and
waits — without reloading — for the live stream to replace the list (the run now waits
at its canary promote); checks a 375 px phone has no horizontal overflow; and reads the
Chinese labels from the DOM (this machine's Chromium has no CJK fonts, so the Chinese
screenshot shows boxes: the text is asserted, not the pixels). Screenshots go to
``tests/artifacts/status-page-overview*.png``. Skipped, with the reason, when Chromium
or Playwright is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
from api import configs, driving
from api.servers import LiveServer
from gitrepos import ROOT

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed"
)
if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


async def test_overview_attention_live_refresh_phone_and_chinese(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    waiting = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE)
    failed = await driving.rejected(engine, "dev")
    assert failed.state is RunState.FAILED
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(server.url + "/login")
            await page.fill("#token", tokens["olga"])
            await page.click("button[type=submit]")
            await page.wait_for_selector("#attention")

            approval = page.locator(f'#attention-approvals li[data-run="{waiting.id}"]')
            text = await approval.inner_text()
            assert "app/prod" in text and "approval:release" in text
            assert "mike, olga, alice" in text and f"quicflow approve {waiting.id}" in text
            hover = await approval.locator("time").get_attribute("title")
            assert hover and hover.endswith("Z") and "T" in hover
            failed_item = page.locator(f'#attention-failed li[data-run="{failed.id}"]')
            assert "failed" in await failed_item.inner_text()
            await page.wait_for_selector("#live-flag:not([hidden])")  # the stream is open
            await page.screenshot(path=str(ARTIFACTS / "status-page-overview.png"), full_page=True)

            # The engine moves on; the page follows without a reload.
            await page.evaluate("window.__sameDocument = true")
            await engine.approve(waiting.id, driving.admin(engine))
            await engine.wait_idle()
            await approval.filter(has_text="promote:1").wait_for(timeout=15_000)
            assert await page.evaluate("window.__sameDocument === true")  # not reloaded
            assert f"quicflow promote {waiting.id}" in await approval.inner_text()
            await page.screenshot(
                path=str(ARTIFACTS / "status-page-overview-live.png"), full_page=True
            )

            phone = await browser.new_page(viewport={"width": 375, "height": 812})
            await phone.context.add_cookies(await page.context.cookies())
            await phone.goto(server.url + "/")
            await phone.wait_for_selector("#attention")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"the overview is {width} px wide on a 375 px phone"
            await phone.screenshot(
                path=str(ARTIFACTS / "status-page-overview-phone.png"), full_page=True
            )

            await phone.goto(server.url + "/?lang=zh")
            await phone.wait_for_selector("#attention")
            assert (await phone.locator("html").get_attribute("lang")) == "zh-CN"
            attention = await phone.inner_text("#attention")
            assert "等待审批" in attention and "失败或已回滚" in attention
            assert "可审批人" in attention and "操作方式" in attention
            assert "失败" in await phone.inner_text(f'#attention-failed li[data-run="{failed.id}"]')
            assert "总览" in await phone.inner_text("header")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 375
            await phone.screenshot(
                path=str(ARTIFACTS / "status-page-overview-zh.png"), full_page=True
            )
        finally:
            await browser.close()
