"""Run logs over real HTTP: plain query, export, and Server-Sent Events that resume losslessly.

The runs are the real engine's, on the gated config. A run waiting for its approval has
an empty, open log: the transport tests append lines to it through the engine's real
``LogStore`` (so the test decides exactly when each line arrives) and end it the real
way, by cancelling the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from api import configs, driving
from api.servers import LiveServer

from reconciler.engine.reconciling import Reconciler
from reconciler.log.store import FOLLOW_PAGE
from reconciler.runs import RunState, StepStatus, Trigger


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


def write(engine: Reconciler, run_id: str, first: int, last: int) -> None:
    entries = [
        ("2026-11-29T10:00:00Z", "web-1", "stdout", f"line {i}") for i in range(first, last + 1)
    ]
    engine.logs.append(run_id, entries)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream into {id, event, data} dicts (comments are skipped)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if "event" in event or "data" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            event["data"] = json.loads(value)
        elif name in ("id", "event"):
            event[name] = value


async def read_until(
    events: AsyncIterator[dict[str, Any]], seq: int | None, seen: list[int]
) -> str:
    """Collect line sequence numbers until ``seq`` (or the end event); returns the last event id."""
    last = ""
    async for event in events:
        if event.get("event") == "end":
            return "end"
        assert event["event"] == "lines"
        numbers = [line["seq"] for line in event["data"]]
        assert numbers and event["id"] == str(numbers[-1])  # the id is the event's last line
        seen.extend(numbers)
        last = event["id"]
        if seq is not None and numbers[-1] >= seq:
            return last
    return last


async def test_sse_client_that_reconnects_with_last_event_id_loses_no_line(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "dev", configs.APPROVAL_GATE, "1.0.1")
    assert engine.logs.read(run.id) == []
    write(engine, run.id, 1, 5)
    seen: list[int] = []
    url = f"/api/release/runs/{run.id}/logs/stream"
    async with server.client(tokens["vic"]) as client:
        async with client.stream("GET", url) as response, aclosing(sse_events(response)) as events:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert await read_until(events, 5, seen) == "5"
            write(engine, run.id, 6, 8)  # live lines while connected
            last_id = await read_until(events, 8, seen)
        write(engine, run.id, 9, 12)  # written while the client is away
        headers = {"Last-Event-ID": last_id}
        async with (
            client.stream("GET", url, headers=headers) as response,
            aclosing(sse_events(response)) as events,
        ):
            await read_until(events, 12, seen)
            write(engine, run.id, 13, 15)
            cancelled = await engine.cancel(run.id, driving.admin(engine))  # ends the log
            assert cancelled.state is RunState.CANCELLED
            assert await asyncio.wait_for(read_until(events, None, seen), 10) == "end"
    assert seen == list(range(1, 16))


async def test_a_resume_at_any_event_boundary_continues_exactly_after_it(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    page = FOLLOW_PAGE  # the most lines one event carries
    run = await driving.waiting_at(engine, "dev", configs.APPROVAL_GATE, "1.0.1")
    ends = [page, 2 * page, 2 * page + page // 2]
    write(engine, run.id, 1, ends[-1])
    url = f"/api/release/runs/{run.id}/logs/stream"

    async def events_from(
        client: httpx.AsyncClient, last_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        got: list[dict[str, Any]] = []
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            async with aclosing(sse_events(response)) as events:
                async for event in events:
                    got.append(event)
                    if len(got) == count:
                        break
        return got

    def numbers(events: list[dict[str, Any]]) -> list[int]:
        return [line["seq"] for event in events for line in event["data"]]

    async with server.client(tokens["vic"]) as client:
        # Stored lines come a page to an event, each id the number of the event's last line.
        whole = await events_from(client, None, 3)
        assert [e["id"] for e in whole] == [str(end) for end in ends]
        starts = [0, *ends[:-1]]
        assert [numbers([e]) for e in whole] == [
            list(range(start + 1, end + 1)) for start, end in zip(starts, ends, strict=True)
        ]
        # Reconnecting with an event's id resumes right after its last line.
        for end in ends[:-1]:
            assert numbers(await events_from(client, str(end), 1))[0] == end + 1
        # From the last id on: only what is written later, nothing repeated.
        write(engine, run.id, ends[-1] + 1, ends[-1] + 3)
        later = await events_from(client, str(ends[-1]), 1)
        assert numbers(later) == [ends[-1] + 1, ends[-1] + 2, ends[-1] + 3]
        assert later[0]["id"] == str(ends[-1] + 3)
        # A client that left off inside a page (an id the server never sent) too.
        middle = await events_from(client, str(page + 1), 2)
        assert numbers(middle) == list(range(page + 2, ends[-1] + 4))
        assert [e["id"] for e in middle] == [str(page * 2 + 1), str(ends[-1] + 3)]


async def test_sse_lines_are_the_stored_lines_as_the_api_gives_them(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "dev", configs.APPROVAL_GATE, "1.0.1")
    texts = ['say "hi"', "back\\slash", "tab\there", "\x1b[31mred\x1b[0m", "naïve 日本 🚀", ""]
    engine.logs.append(run.id, [("2026-11-29T10:00:00.5Z", "web-1", "stderr", t) for t in texts])
    async with server.client(tokens["vic"]) as client:
        stored = (await client.get(f"/api/release/runs/{run.id}/logs")).json()["lines"]
        url = f"/api/release/runs/{run.id}/logs/stream"
        async with client.stream("GET", url) as response, aclosing(sse_events(response)) as events:
            event = await anext(events)
    assert [line["line"] for line in event["data"]] == texts
    assert event["data"] == [line.as_dict() for line in engine.logs.read(run.id)]
    assert [line["seq"] for line in stored] == [line["seq"] for line in event["data"]]


async def test_log_query_and_export(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.APPROVAL_GATE, "1.0.1")
    write(engine, run.id, 1, 12)
    async with server.client(tokens["dev"]) as client:
        after = (await client.get(f"/api/release/runs/{run.id}/logs", params={"after": 10})).json()
        found = (
            await client.get(f"/api/release/runs/{run.id}/logs", params={"contains": "line 1"})
        ).json()
        export = await client.get(f"/api/release/runs/{run.id}/logs/export")
        bad = await client.get(f"/api/release/runs/{run.id}/logs", params={"after": "x"})
    assert [line["seq"] for line in after["lines"]] == [11, 12] and after["last_seq"] == 12
    assert [line["line"] for line in found["lines"]] == ["line 1", "line 10", "line 11", "line 12"]
    assert export.headers["content-type"].startswith("text/plain")
    assert "attachment" in export.headers["content-disposition"]
    assert export.text.count("\n") == 12 and "[web-1] stdout: line 7\n" in export.text
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "after"


async def test_run_events_follow_state_changes_until_final(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    # Approved; the canary released web-1 and waits for a promote before web-2.
    run = await driving.waiting_at(engine, "prod", configs.PROMOTE_GATE, "1.0.1")
    steps = {s.key: s.status for s in engine.runs.steps(run.id)}
    assert steps["deploy:web-1"] is StepStatus.SUCCEEDED and "deploy:web-2" not in steps
    states: list[str] = []
    url = f"/api/release/runs/{run.id}/events"
    async with server.client(tokens["vic"]) as client, client.stream("GET", url) as response:
        async for event in sse_events(response):
            if not states:
                view = event["data"]
                assert view["stages"][0]["tasks"][0]["name"] == "deploy"
                await engine.promote(run.id, driving.admin(engine))
            if not states or states[-1] != event["data"]["state"]:
                states.append(event["data"]["state"])
    # The promoted run runs its second step (web-2) before it ends.
    assert states == ["waiting_approval", "running", "succeeded"]


async def test_runs_list_filters_and_pages(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    for i in range(5):  # released when odd; rejected (so failed) when even
        decide = driving.released if i % 2 else driving.rejected
        run = await decide(engine, "dev", f"1.0.{i}")
        assert run.state is (RunState.SUCCEEDED if i % 2 else RunState.FAILED), run
    await engine.deploy("other", "dev", None, actor=None, trigger=Trigger.MANUAL)
    async with server.client(tokens["olga"]) as olga, server.client(tokens["alice"]) as alice:
        page = (await olga.get("/api/release/runs", params={"limit": 2, "offset": 1})).json()
        failed = (
            await olga.get("/api/release/runs", params={"project": "app", "state": "failed"})
        ).json()
        everything = (await alice.get("/api/release/runs")).json()
        wrong = await olga.get("/api/release/runs", params={"state": "exploded"})
    assert page["total"] == 5 and [r["version"] for r in page["items"]] == ["1.0.3", "1.0.2"]
    assert failed["total"] == 3
    assert everything["total"] == 6
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "state"


async def test_a_canary_waiting_half_way_shows_half_its_progress(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.PROMOTE_GATE, "1.0.1")
    async with server.client(tokens["vic"]) as client:
        view = (await client.get(f"/api/release/runs/{run.id}")).json()
    assert view["progress"] == {"done": 1, "total": 2, "percent": 50}


async def test_a_task_paused_for_a_promote_is_not_shown_failed(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    run = await driving.waiting_at(engine, "prod", configs.PROMOTE_GATE, "1.0.1")
    async with server.client(tokens["vic"]) as client:
        view = (await client.get(f"/api/release/runs/{run.id}")).json()
    (task,) = view["stages"][0]["tasks"]
    assert task["status"] == "waiting", task
