"""The agents API and page with a real agent: what it reports, not counts.

A real hub (loopback QUIC) runs in the test's event loop as ``quicflow serve`` runs it
beside the engine; a real agent subprocess watches a real process, and reports this
machine's QUIC-Flow containers if a Docker daemon runs here. The API and the page are
read over real HTTP from the real server.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from api.servers import LiveServer
from hub.conftest import HEARTBEAT, Fleet

from reconciler.engine.reconciling import Reconciler
from reconciler.hub.server import Hub

pytestmark = pytest.mark.integration


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A started hub in its own directory (the engine's data dir is the test's ``data``)."""
    instance = Hub(tmp_path / "hub", port=0, heartbeat_interval=HEARTBEAT)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Fleet]:
    """Agent subprocesses, killed after the test."""
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.cleanup()


async def _reported(client: Any, pid: int) -> dict[str, Any]:
    """The agents API's web-1 once its report lists ``pid`` (bounded wait)."""
    for _ in range(200):
        items = (await client.get("/api/release/agents")).json()["items"]
        for item in items:
            if item["name"] == "web-1" and any(p["pid"] == pid for p in item["processes"] or ()):
                return dict(item)
        await asyncio.sleep(0.05)
    raise AssertionError(f"web-1 never reported pid {pid}: {items}")


async def test_the_agents_api_and_page_show_a_real_agent_s_processes_and_containers(
    engine: Reconciler, server: LiveServer, tokens: dict[str, str], hub: Hub, agents: Fleet
) -> None:
    watched = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        engine.hub = hub  # as ``quicflow serve`` wires them
        agents.spawn(
            hub,
            "web-1",
            labels="role=web",
            extra=("--watch", str(watched.pid), "--watch", "no-such-process-xyz",
                   "--status-interval", "0.2"),
        )  # fmt: skip
        await hub.wait_for_agents(["web-1"], timeout=10)
        async with server.client(tokens["vic"]) as client:
            agent = await _reported(client, watched.pid)
            page = await client.get("/agents")
            chinese = await client.get("/agents", params={"lang": "zh"})
    finally:
        watched.kill()
        await watched.wait()

    assert agent["labels"] == {"role": "web"} and agent["reported_at"] is not None
    sleeping, absent = agent["processes"]
    assert sleeping["name"] == "sleep" and sleeping["pid"] == watched.pid
    assert sleeping["state"] == "sleeping" and sleeping["memory_bytes"] > 0
    # Started before the agent connected (/proc's boot time is whole seconds: 1 s of slack).
    assert sleeping["cpu_percent"] >= 0 and sleeping["started"] <= agent["connected_since"] + 1
    assert absent == {
        "name": "no-such-process-xyz",
        "pid": None,
        "state": "absent",
        "cpu_percent": 0.0,
        "memory_bytes": 0,
        "started": None,
    }
    # Containers: a list (empty without Docker), and only QUIC-Flow's, whatever else runs.
    assert isinstance(agent["containers"], list)
    for container in agent["containers"]:
        assert {"quicflow.project", "quicflow.env"} <= set(container["labels"])
        assert all(key.startswith("quicflow.") for key in container["labels"])
    assert agent["processes_omitted"] == agent["containers_omitted"] == 0

    assert page.status_code == 200
    row = re.search(r'<tr data-kind="process">(.*?)</tr>', page.text, re.S)
    assert row is not None, page.text
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[0] == "process" and "sleep" in cells[1] and str(watched.pid) in cells[1]
    assert cells[2] == "sleeping" and cells[4].endswith("%") and "iB" in cells[5]
    assert f"2 processes · {len(agent['containers'])} containers" in page.text
    assert '<tr data-kind="process">' in chinese.text and "内存" in chinese.text
