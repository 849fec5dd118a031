"""Log search across runs, streamed export, /metrics and ``quicflow logs`` over real HTTP.

The runs are the real engine's on the gated config (a run waiting for approval has an
open log); lines are appended through the engine's real ``LogStore``, the server is
uvicorn on loopback, and the CLI is a real ``quicflow`` process.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from collections.abc import Mapping

import pytest
from api import configs, driving
from api.servers import LiveServer

from reconciler.engine.reconciling import Reconciler


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


def write(engine: Reconciler, run_id: str, first: int, last: int, text: str = "line") -> None:
    engine.logs.append(
        run_id,
        [
            (f"2026-01-07T10:00:{i % 60:02d}Z", "web-1/deploy", "stdout", f"{text} {i}")
            for i in range(first, last + 1)
        ],
    )


async def test_search_across_runs_filters_and_respects_who_may_see(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE, "1.0.1")
    write(engine, run.id, 1, 12)
    engine.logs.append(
        run.id, [("2026-01-07T10:01:00Z", "web-1/deploy", "stderr", "ERROR disk full")]
    )
    async with server.client(tokens["vic"]) as viewer:
        by_text = (
            await viewer.get("/api/release/logs/query", params={"filter": "line 1", "order": "asc"})
        ).json()
        by_run = await viewer.get(
            "/api/release/logs/query", params={"run_id": run.id, "level": "error"}
        )
        paged = (
            await viewer.get("/api/release/logs/query", params={"run_id": run.id, "limit": 5})
        ).json()
        more = (
            await viewer.get(
                "/api/release/logs/query",
                params={"run_id": run.id, "limit": 5, "cursor": paged["next_cursor"]},
            )
        ).json()
        window = (
            await viewer.get(
                "/api/release/logs/query",
                params={"start": "2026-01-07T10:00:03Z", "end": "2026-01-07T10:00:05Z"},
            )
        ).json()
        bad = await viewer.get("/api/release/logs/query", params={"start": "soon"})
    assert [x["line"] for x in by_text["items"]] == ["line 1", "line 10", "line 11", "line 12"]
    assert by_text["backend"] == "local" and by_text["next_cursor"] is None
    item = by_text["items"][0]
    assert (item["run_id"], item["project"], item["env"], item["target"]) == (
        run.id,
        "app",
        "prod",
        "web-1",
    )
    assert [x["line"] for x in by_run.json()["items"]] == ["ERROR disk full"]
    assert [x["seq"] for x in paged["items"]] == [13, 12, 11, 10, 9]
    assert [x["seq"] for x in more["items"]] == [8, 7, 6, 5, 4]
    assert [x["line"] for x in window["items"]] == ["line 4", "line 3"]
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "start"
    async with server.client(tokens["nora"]) as outsider:  # owner of "other" only
        hidden = await outsider.get("/api/release/logs/query", params={"run_id": run.id})
        nothing = (await outsider.get("/api/release/logs/query", params={"filter": "line"})).json()
        export = await outsider.get(f"/api/release/logs/{run.id}/export")
    assert hidden.status_code == 404 and hidden.json()["error"]["field"] == "run_id"
    assert nothing["items"] == []
    assert export.status_code == 404
    async with server.client() as anonymous:
        assert (await anonymous.get("/api/release/logs/query")).status_code == 401


async def test_export_streams_ndjson_or_text_gzip_on_request(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE, "1.0.1")
    write(engine, run.id, 1, 1200)
    url = f"/api/release/logs/{run.id}/export"
    async with server.client(tokens["dev"]) as client:
        ndjson = await client.get(url)
        text = await client.get(url, params={"format": "text", "filter": "line 11"})
        packed = await client.get(url, params={"gzip": "1"})
        negotiated = await client.get(url, headers={"Accept-Encoding": "gzip"})
        bad = await client.get(url, params={"format": "xml"})
        unknown = await client.get("/api/release/logs/r-nope/export")
    lines = [json.loads(x) for x in ndjson.text.splitlines()]
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert [x["seq"] for x in lines] == list(range(1, 1201))
    assert [x["line"] for x in lines] == [f"line {i}" for i in range(1, 1201)]
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.splitlines()[0].endswith("[web-1/deploy] stdout: line 11")
    assert len(text.text.splitlines()) == 1 + 10 + 100  # 11, 110-119, 1100-1199
    assert packed.headers["content-type"] == "application/gzip"
    assert gzip.decompress(packed.content) == ndjson.content
    assert negotiated.headers["content-encoding"] == "gzip" and negotiated.content == ndjson.content
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "format"
    assert unknown.status_code == 404


async def test_metrics_count_runs_and_need_an_admin(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "dev", configs.APPROVAL_GATE, "1.0.1")
    await engine.cancel(run.id, driving.admin(engine))
    await engine.bus.drain()
    async with server.client(tokens["alice"]) as admin, server.client(tokens["vic"]) as viewer:
        page = await admin.get("/metrics")
        refused = await viewer.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    body = page.text
    assert 'quicflow_runs_total{env="dev",project="app",status="cancelled"} 1.0' in body
    assert 'quicflow_runs_started_total{env="dev",project="app"}' in body
    for name in (
        "quicflow_agents_connected",
        "quicflow_commands_in_flight",
        "quicflow_builds_running",
        "quicflow_log_lines_written_total",
        "quicflow_log_store_lines",
        "quicflow_reconcile_passes_total",
    ):
        assert name in body, name
    assert refused.status_code == 403


async def test_quicflow_logs_prints_and_follows_until_the_run_ends(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE, "1.0.1")
    write(engine, run.id, 1, 5)
    env = {**os.environ, "QUICFLOW_TOKEN": tokens["vic"], "QUICFLOW_API": server.url}
    command = [sys.executable, "-m", "reconciler", "logs", run.id]
    printed = await asyncio.create_subprocess_exec(
        *command, "--grep", "line 4", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(printed.communicate(), 30)
    assert printed.returncode == 0 and out.decode() == "[web-1/deploy] line 4\n"
    follower = await asyncio.create_subprocess_exec(
        *command, "-f", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None
    seen = [(await asyncio.wait_for(follower.stdout.readline(), 30)).decode() for _ in range(5)]
    assert seen == [f"[web-1/deploy] line {i}\n" for i in range(1, 6)]
    write(engine, run.id, 6, 7)  # live
    seen = [(await asyncio.wait_for(follower.stdout.readline(), 30)).decode() for _ in range(2)]
    assert seen == ["[web-1/deploy] line 6\n", "[web-1/deploy] line 7\n"]
    await engine.cancel(run.id, driving.admin(engine))  # the log ends: so does -f
    rest = await asyncio.wait_for(follower.stdout.read(), 30)
    assert await follower.wait() == 0  # exited by itself at the end event
    assert "line" not in rest.decode()  # nothing printed twice
    missing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler",
        "logs",
        "r-nope",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(missing.communicate(), 30)
    assert missing.returncode == 1 and b"no run or build 'r-nope'" in err


async def test_the_status_page_searches_logs_across_runs(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE, "1.0.1")
    write(engine, run.id, 1, 3, text="<b>found</b>")
    async with server.client(tokens["vic"]) as viewer:
        page = await viewer.get("/logs", params={"filter": "<b>found</b> 2"})
        empty = await viewer.get("/logs")
        bad = await viewer.get("/logs", params={"filter": "x", "start": "soon"})
        run_page = await viewer.get(f"/runs/{run.id}/logs")
    assert page.status_code == 200
    assert "&lt;b&gt;found&lt;/b&gt; 2" in page.text and "<b>found</b>" not in page.text
    assert f'href="/runs/{run.id}/logs"' in page.text and "app/prod" in page.text
    assert "No line matches" not in page.text and "<table" not in empty.text
    assert bad.status_code == 200 and "start must be an RFC 3339 time" in bad.text
    assert 'href="/logs"' in run_page.text  # the run's log links to the search
    async with server.client(tokens["nora"]) as outsider:
        hidden = await outsider.get("/logs", params={"filter": "found"})
    assert "No line matches" in hidden.text and run.id not in hidden.text
