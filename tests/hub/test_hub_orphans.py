"""An agent killed mid-step: the agent that replaces it kills the orphan before its HELLO,
and a hub that gave the command up as lost collects how it ended.

Real hub, real ``python -m agent`` processes; the first agent is SIGKILLed alone, so its
step lives on in a session of its own, exactly as on a host whose agent crashed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent import spawning
from agent.protocol import ExecRequest
from reconciler import errors
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.integration


def alive_in(session: int) -> list[int]:
    """Pids of the live (not zombie) processes of ``session``."""
    return [p.pid for p in spawning.processes() if p.session == session and p.alive]


async def grows(path: Path, timeout: float = 5.0) -> bool:
    """Whether ``path`` grows within ``timeout`` s."""
    size = path.stat().st_size
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if path.stat().st_size > size:
            return True
    return False


async def test_a_restarted_agent_kills_the_orphan_before_hello_and_reports_it(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    hub.reconnect_grace = 15.0  # the command waits for the agent that replaces the dead one
    marker, pid_file = tmp_path / "ticks", tmp_path / "step.pid"
    agent = fleet.spawn(hub, "phoenix")
    await hub.wait_for_agents(["phoenix"], timeout=10)
    request = ExecRequest(
        command_id=f"test-{uuid.uuid4().hex[:12]}",
        script=f"echo $$ > {pid_file}; while :; do echo tick >> {marker}; sleep 0.1; done",
    )
    running = asyncio.ensure_future(hub.execute("phoenix", request))
    deadline = time.monotonic() + 10
    while not (marker.exists() and pid_file.exists()):
        assert time.monotonic() < deadline, "the step never started"
        await asyncio.sleep(0.05)
    session = int(pid_file.read_text())

    agent.crash()  # the agent only
    assert await grows(marker), "the orphan should outlive its agent"
    assert session in alive_in(session)

    again = fleet.spawn(hub, "phoenix", work_dir=agent.work_dir)
    log = await again.wait_log("connected to hub")
    assert alive_in(session) == []  # gone by the time the hub heard from the new agent
    killed = log.index(f"killed orphan pid {session} ")
    assert killed < log.index("connected to hub")
    result = await asyncio.wait_for(running, 15)
    assert result.exit_code is None and result.error is not None
    assert result.error.startswith("interrupted: the agent restarted while this ran; its processes")
    assert str(session) in result.error
    assert result.error.endswith("were killed before the agent reconnected")
    assert not await grows(marker, timeout=0.5)


async def test_a_lost_command_is_collected_once_its_agent_is_back(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    marker, pid_file = tmp_path / "ticks", tmp_path / "step.pid"
    agent = fleet.spawn(hub, "wanderer")
    await hub.wait_for_agents(["wanderer"], timeout=10)
    request = ExecRequest(
        command_id=f"test-{uuid.uuid4().hex[:12]}",
        script=f"echo $$ > {pid_file}; while :; do echo tick >> {marker}; sleep 0.1; done",
    )
    running = asyncio.ensure_future(hub.execute("wanderer", request))
    deadline = time.monotonic() + 10
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the step never started"
        await asyncio.sleep(0.05)
    session = int(pid_file.read_text())
    agent.crash()
    # Not back within the reconnect grace: lost, and its fate unknown (it does run on).
    with pytest.raises(errors.AgentLost, match="its fate is unknown") as lost:
        await asyncio.wait_for(running, 15)
    assert (lost.value.agent, lost.value.command_id) == ("wanderer", request.command_id)
    assert session in alive_in(session)
    with pytest.raises(errors.AgentLost, match="did not report back within 0.5 s"):
        await hub.collect("wanderer", request.command_id, timeout=0.5)

    fleet.spawn(hub, "wanderer", work_dir=agent.work_dir)
    result = await hub.collect("wanderer", request.command_id, timeout=15)
    assert alive_in(session) == []
    assert result.command_id == request.command_id and result.exit_code is None
    assert "were killed before the agent reconnected" in (result.error or "")
    assert hub.commands_in_flight() == 0
