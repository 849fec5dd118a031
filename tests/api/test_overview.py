"""The status page's overview and history over real HTTP, without a browser.

The real engine and server on the gated config (``api.configs.GATED_FILES``): a prod run
waits at its approval, a dev run whose approval was rejected ended failed. The overview
opens with what needs attention (who may decide the gate and how, since when), each cell
says how old the deployed version is and who put it there, the live stream sends the
overview again when the engine changes, history filters and pages, the Chinese view
translates its labels, and the favicon is served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx
import pytest
from api import configs, driving
from api.servers import LiveServer
from gitrepos import ConfigRepo

from reconciler.api import pages
from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState, Trigger

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


def section(html: str, element_id: str) -> str:
    """The markup of the element with ``element_id`` up to the next card (enough to assert on)."""
    start = html.index(f'id="{element_id}"')
    return html[start : html.find('<div class="card"', start + 1) % (len(html) + 1)]


async def test_the_overview_opens_with_what_needs_attention(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    waiting = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE)
    failed = await driving.rejected(engine, "dev")
    assert failed.state is RunState.FAILED
    async with server.client(tokens["vic"]) as client:
        html = (await client.get("/")).text
        zh = (await client.get("/", params={"lang": "zh"})).text
    approvals = section(html, "attention-approvals")
    assert f'data-run="{waiting.id}"' in approvals
    assert "Gate approval:release" in approvals
    # prod is protected: the stage names developers, the matrix keeps them out.
    assert '<span class="approvers">mike, olga, alice</span>' in approvals
    assert f"<code>quicflow approve {waiting.id}</code>" in approvals
    assert f"<code>POST /api/release/runs/{waiting.id}/approve</code>" in approvals
    since = re.search(r'since <time datetime="([^"]+)" title="\1">([^<]+)</time>', approvals)
    assert since and ISO.fullmatch(since.group(1)) and since.group(2) == "just now"
    failed_box = section(html, "attention-failed")
    assert f'data-run="{failed.id}"' in failed_box and ">failed<" in failed_box
    assert html.index('id="attention"') < html.index('id="grid"')  # attention comes first

    assert "需要处理" in zh and "等待审批" in zh and "失败或已回滚" in zh and "可审批人" in zh
    assert "等待审批</span>" in zh and ">失败<" in zh  # state badges translated
    assert "waiting approval" not in zh and ">failed<" not in zh


async def test_an_open_status_page_names_the_roles_that_may_decide_not_the_people(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo
) -> None:
    settings = api_repo.read("quicflow.yaml").replace(
        "settings:\n", "settings:\n  anonymous_status_page: true\n"
    )
    api_repo.commit({"quicflow.yaml": settings}, message="open the status page")
    await engine.refresh()
    await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE)
    async with server.client() as anonymous:
        page = await anonymous.get("/")
    assert page.status_code == 200
    box = section(page.text, "attention-approvals")
    assert '<span class="approvers">roles owner, maintainer</span>' in box
    assert "olga" not in box and "mike" not in box


async def test_cells_show_the_deployed_versions_age_and_who_deployed_it(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await engine.deploy(
        "app", "dev", None, actor=engine.desired.users["mike"], trigger=Trigger.MANUAL
    )
    await engine.wait_idle()
    await driving.through_gates(engine, driving.current(engine, run))
    async with server.client(tokens["vic"]) as client:
        html = (await client.get("/")).text
    cell = html[html.index('data-env="dev"') :]
    cell = cell[: cell.index("</td>")]
    deployed = re.search(
        r'<time datetime="([^"]+)" title="\1">just now</time> · by <span class="changed-by">mike</span>',
        cell,
    )
    assert deployed and ISO.fullmatch(deployed.group(1)), cell


async def test_the_overview_stream_sends_the_page_again_when_a_run_moves_on(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    waiting = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE)
    seen: list[str] = []
    async with (
        server.client(tokens["vic"]) as client,
        client.stream("GET", "/overview/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[6:])["html"])
            if len(seen) == 1:
                assert "Gate approval:release" in seen[0]
                await engine.approve(waiting.id, driving.admin(engine))  # on to the canary
                await engine.wait_idle()
            elif "Gate promote:1" in seen[-1]:
                break
    assert "Gate promote:1" in seen[-1] and f"quicflow promote {waiting.id}" in seen[-1]
    assert "<html" not in seen[-1]  # a fragment, swapped into the page


async def test_recent_runs_can_hide_scheduled_ones(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    scheduled = await engine.deploy("app", "dev", None, actor=None, trigger=Trigger.SCHEDULE)
    await engine.wait_idle()
    await engine.reject(scheduled.id, driving.admin(engine), "not now")
    await engine.wait_idle()
    manual = await driving.rejected(engine, "dev")
    async with server.client(tokens["vic"]) as client:
        every = (await client.get("/")).text
        hidden = (await client.get("/", params={"scheduled": "hide"})).text
    recent = every[every.index('id="recent"') :]
    assert f'data-run="{scheduled.id}" data-trigger="schedule"' in recent
    recent_hidden = hidden[hidden.index('id="recent"') :]
    assert scheduled.id not in recent_hidden and f'data-run="{manual.id}"' in recent_hidden
    assert 'href="/?scheduled=hide"' in every and "Show scheduled runs" in hidden
    assert 'data-events="/overview/events?scheduled=hide"' in hidden  # the live part agrees


async def test_history_filters_and_pages(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    first = await driving.rejected(engine, "dev")
    second = await driving.rejected(engine, "dev")
    scheduled = await engine.deploy("app", "dev", None, actor=None, trigger=Trigger.SCHEDULE)
    await engine.wait_idle()
    async with server.client(tokens["vic"]) as client:
        failed = (await client.get("/history", params={"state": "failed"})).text
        by_trigger = (await client.get("/history", params={"trigger": "schedule"})).text
        other_env = (await client.get("/history", params={"env": "prod"})).text
        bad = await client.get("/history", params={"state": "broken", "offset": "x"})
        zh = (await client.get("/history", params={"lang": "zh", "state": "failed"})).text

    def runs_in(html: str) -> list[str]:
        table = html[html.index('id="history-runs"') :] if 'id="history-runs"' in html else ""
        return re.findall(r'<tr data-run="([^"]+)">', table)

    assert runs_in(failed) == [second.id, first.id]
    assert runs_in(by_trigger) == [scheduled.id]
    assert runs_in(other_env) == []
    assert bad.status_code == 400
    assert "unknown state &#39;broken&#39; (query parameter &#39;state&#39;)" in bad.text
    assert "query parameter &#39;offset&#39; must be a whole number" in bad.text
    assert "发布记录" in zh and "第 1–2 条，共 2 条" in zh and ">失败<" in zh


async def test_history_pages_through_runs(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "HISTORY_PAGE", 2)
    made = [await driving.rejected(engine, "dev") for _ in range(3)]
    async with server.client(tokens["vic"]) as client:
        one = (await client.get("/history")).text
        two = (await client.get("/history", params={"offset": "2"})).text
    assert f'data-run="{made[2].id}"' in one and f'data-run="{made[0].id}"' not in one
    assert "1–2 of 3" in one and 'rel="next" href="/history?offset=2"' in one
    assert f'data-run="{made[0].id}"' in two and 'rel="prev" href="/history?offset=0"' in two


async def test_long_versions_are_shortened_and_times_are_iso(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    sha = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"
    run = await driving.rejected(engine, "dev", sha)
    async with server.client(tokens["vic"]) as client:
        overview = (await client.get("/")).text
        run_page = (await client.get(f"/runs/{run.id}")).text
    assert f'<span title="{sha}">{sha[:10]}</span>' in overview
    assert f'<span title="{sha}">{sha[:10]}</span>' in run_page
    assert f">{sha}<" not in overview
    assert not re.search(r"\d\d:\d\d UTC", overview + run_page)  # the old format is gone
    assert ISO.search(run_page)


async def test_the_favicon_is_a_small_svg(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        icon = await client.get("/favicon.ico")
        login = await client.get("/login")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg") and len(icon.content) < 1024
    assert '<link rel="icon" type="image/svg+xml" href="data:image/svg+xml,' in login.text


def test_ages_and_times_are_worded_per_language() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
    assert pages.iso_time("2026-12-03T12:00:00.123+00:00") == "2026-12-03T12:00:00Z"
    assert pages.iso_time(1796299200) == "2026-12-03T12:00:00Z"
    assert pages.age("2026-12-03T12:00:00Z", now, pages.LABELS["en"]) == "3 h ago"
    assert pages.age("2026-12-03T14:58:00Z", now, pages.LABELS["zh"]) == "2 分钟前"
    assert pages.age("2026-11-30T15:00:00Z", now, pages.LABELS["en"]) == "3 d ago"
    assert str(pages.shortened("1.2.3")) == "1.2.3"
    assert set(pages.LABELS["en"]) == set(pages.LABELS["zh"])  # every label is translated
