"""Who may hold an agent name, and what the hub may make an agent do -- over real QUIC.

Two agents claiming one name: the second is refused, the first keeps it; a killed agent's
successor takes the name back without waiting for the old connection to time out.  A
revoked token disconnects the agent within one heartbeat and cancels what it ran.  A
refused agent retries only after a long wait, or at once when its token file changes.
An agent refuses deploy types it does not accept, directories outside its work root, and
does not pass its own secrets to steps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.protocol import ExecRequest
from reconciler import errors
from reconciler.hub import tokens
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.integration


def command_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def test_a_second_agent_with_a_connected_name_is_refused_and_the_first_keeps_it(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    assert hub.tokens is not None
    token = hub.tokens.create("web-1")  # both hold the real token: only the name clashes
    first = fleet.spawn(hub, "web-1", token=token, labels="copy=first")
    (info,) = await hub.wait_for_agents(["web-1"], timeout=10)
    second = fleet.spawn(hub, "web-1", token=token, labels="copy=second", work_dir=tmp_path / "w2")
    log = await second.wait_log("retrying in 300 s")
    assert (
        "refused agent 'web-1' (duplicate): agent name 'web-1' is already in use (the agent"
        f" connected from host '{info.hostname}', {info.address} answers); two agents cannot"
        " share a name"
    ) in log
    # No silent takeover: the first is still the one the hub talks to.
    (still,) = hub.agents()
    assert still.labels == {"copy": "first"} and still.connected_since == info.connected_since
    result = await hub.execute("web-1", ExecRequest(command_id=command_id(), argv=["true"]))
    assert result.ok
    assert "replaced" not in first.log_text() and "lost" not in first.log_text()
    assert second.process.poll() is None  # it waits, quietly, instead of hammering the hub
    assert log.count("refused agent") == 1


async def test_a_killed_agents_successor_takes_the_name_without_waiting_for_the_timeout(
    hub: Hub, fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert hub.tokens is not None
    token = hub.tokens.create("phoenix")
    # A 5 s heartbeat: the hub would only declare the old connection lost after 15 s.
    slow = ("--heartbeat", "5")
    first = fleet.spawn(hub, "phoenix", token=token, extra=slow)
    await hub.wait_for_agents(["phoenix"], timeout=10)
    first.kill()
    killed = time.monotonic()
    successor = fleet.spawn(hub, "phoenix", token=token, extra=slow, work_dir=first.work_dir)
    await successor.wait_log("connected to hub", timeout=10)
    # The hub's PING went unanswered (the claim probe, 2 s), and the successor was let in.
    assert time.monotonic() - killed < 8
    assert [a.name for a in hub.agents()] == ["phoenix"]
    assert "refused" not in successor.log_text()
    assert "agent 'phoenix': the connection from 127.0.0.1:" in caplog.text
    assert "did not answer; the new one from 127.0.0.1:" in caplog.text


async def test_revoking_disconnects_within_a_heartbeat_and_cancels_running_commands(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    heartbeat = 2.0
    agent = fleet.spawn(hub, "doomed", extra=("--heartbeat", str(heartbeat)))
    await hub.wait_for_agents(["doomed"], timeout=10)
    marker = tmp_path / "finished"
    chunks: list[bytes] = []
    running = asyncio.ensure_future(
        hub.execute(
            "doomed",
            ExecRequest(command_id=command_id(), script=f"echo go; sleep 3; touch {marker}"),
            on_output=lambda stream, data: chunks.append(data),
        )
    )
    while b"go" not in b"".join(chunks):
        await asyncio.sleep(0.02)
    # Revoked from another process, as `quicflow agent-token revoke` does.
    assert tokens.TokenStore(hub.data_dir).revoke("doomed")
    revoked = time.monotonic()
    with pytest.raises(errors.TemporaryError, match="was revoked while it ran"):
        await asyncio.wait_for(running, heartbeat)
    assert time.monotonic() - revoked < heartbeat
    assert hub.agents() == []
    await agent.wait_log("token of agent 'doomed' was revoked")
    await agent.wait_log("unknown agent 'doomed'")  # it retried once and stays out
    await asyncio.sleep(3.5)
    assert not marker.exists(), "the revoked agent's command ran to completion"
    assert hub.agents() == []


async def test_a_refused_agent_waits_long_but_retries_as_soon_as_its_token_file_changes(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    assert hub.tokens is not None
    hub.tokens.create("web-7")
    token_file = tmp_path / "web-7.token"
    token_file.write_text("qfa_wrong\n")
    agent = fleet.spawn(
        hub, "web-7", token="", extra=("--token-file", str(token_file), "--refused-retry", "300")
    )
    log = await agent.wait_log("or as soon as the token file changes")
    assert "refused agent 'web-7' (auth): invalid token for agent 'web-7'; retrying in 300 s" in log
    await asyncio.sleep(1.5)
    assert agent.log_text().count("refused agent") == 1 and hub.agents() == []

    token_file.write_text(hub.tokens.create("web-7") + "\n")
    await hub.wait_for_agents(["web-7"], timeout=10)
    log = await agent.wait_log("connected to hub")
    assert f"token file {token_file} changed: reconnecting now" in log


async def test_an_agent_runs_only_what_it_accepts_where_it_allows_without_its_secrets(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    agent = fleet.spawn(hub, "boxed", extra=("--allow-deploy-types", "container"))
    await hub.wait_for_agents(["boxed"], timeout=10)
    await agent.wait_log("deploy types container")
    marker = tmp_path / "ran"

    result = await hub.execute(
        "boxed", ExecRequest(command_id=command_id(), script=f"touch {marker}")
    )
    assert result.exit_code is None and (result.error or "").startswith(
        "refused: this agent does not accept 'script' commands"
    )
    result = await hub.execute(
        "boxed",
        ExecRequest(
            command_id=command_id(), argv=["touch", str(marker)], cwd="/", deploy_type="container"
        ),
    )
    assert result.error == f"refused: cwd '/' is outside this agent's work root {agent.work_dir}"
    assert not marker.exists()

    # Accepted: it runs inside the work root and sees no agent secret (the fleet passes the
    # token in QUICFLOW_AGENT_TOKEN), only the basics and what the hub sent.
    seen: list[bytes] = []
    result = await hub.execute(
        "boxed",
        ExecRequest(
            command_id=command_id(),
            argv=["sh", "-c", "pwd; env"],
            cwd="apps/shop",
            env={"APP": "shop"},
            deploy_type="container",
        ),
        on_output=lambda stream, data: seen.append(data),
    )
    assert result.ok
    lines = b"".join(seen).decode().splitlines()
    assert lines[0] == str(agent.work_dir / "apps" / "shop")
    names = {line.partition("=")[0] for line in lines[1:]}
    assert "APP=shop" in lines and "PATH" in names
    assert "QUICFLOW_AGENT_TOKEN" not in names and "PYTHONPATH" not in names
