"""One agent process serving two hubs, as it serves several reconciler replicas.

Two real ``Hub`` instances in this process (each with its own directory, certificate and
token file, as replicas have) and one ``python -m agent`` with ``--server`` and
``--pin-sha256`` once per hub and one token, issued by the first hub and registered on
the second.  Both hubs list the agent and run commands on it; a command id the second
hub sends after the first started it is adopted (a marker file counts its runs), also
when the first hub stopped mid-command; a hub that is down holds nothing up; SIGTERM
still delivers a running command's result to the hub that waits for it.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.protocol import ExecRequest
from reconciler import errors
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import AgentProcess, Fleet

pytestmark = pytest.mark.integration

HEARTBEAT = 0.5  # the hub fixture's, so "lost" takes 1.5 s


class Output:
    """Collects a command's stdout."""

    def __init__(self) -> None:
        self.data = b""

    def __call__(self, stream: str, data: bytes) -> None:
        if stream == "stdout":
            self.data += data

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.data.decode():
                await asyncio.sleep(0.02)


@pytest.fixture
async def other_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A second hub, with a directory (identity, tokens) of its own: another replica's."""
    instance = Hub(tmp_path / "data-b", port=0, heartbeat_interval=HEARTBEAT, reconnect_grace=3.0)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def spawn_on(
    fleet: Fleet, hubs: list[Hub], name: str, first_port: int | None = None
) -> AgentProcess:
    """An agent with one token, issued by the first hub and registered on the others."""
    first, *others = hubs
    assert first.tokens is not None
    token = first.tokens.create(name)
    extra: list[str] = []
    for hub in others:
        assert hub.tokens is not None and hub.identity is not None
        hub.tokens.register(name, token)
        extra += ["--server", f"127.0.0.1:{hub.port}", "--pin-sha256", hub.identity.fingerprint()]
    return fleet.spawn(first, name, token=token, port=first_port, extra=tuple(extra))


def counting(marker: Path, seconds: float) -> ExecRequest:
    """A command that appends a line to ``marker`` when it starts, then sleeps."""
    return ExecRequest(
        command_id=f"run-1:deploy:web#1:{uuid.uuid4().hex[:8]}",
        script=f'echo ran >> "{marker}"; echo go; sleep {seconds}; echo done',
    )


async def test_both_hubs_list_the_agent_and_run_commands_on_it(
    hub: Hub, other_hub: Hub, fleet: Fleet
) -> None:
    agent = spawn_on(fleet, [hub, other_hub], "both")
    for each in (hub, other_hub):
        await each.wait_for_agents(["both"], timeout=15)
        assert [info.name for info in each.agents()] == ["both"]
    for each in (hub, other_hub):
        await agent.wait_log(f"connected to hub 127.0.0.1:{each.port} as 'both'")

    first, second = Output(), Output()
    results = await asyncio.gather(
        hub.execute("both", ExecRequest(command_id="a-1", argv=["echo", "from a"]), first),
        other_hub.execute("both", ExecRequest(command_id="b-1", argv=["echo", "from b"]), second),
    )
    assert all(result.ok for result in results)
    assert (first.data, second.data) == (b"from a\n", b"from b\n")


async def test_a_command_the_other_hub_sends_after_the_first_stopped_is_adopted(
    hub: Hub, other_hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    agent = spawn_on(fleet, [hub, other_hub], "shared")
    for each in (hub, other_hub):
        await each.wait_for_agents(["shared"], timeout=15)
    request = counting(marker, 2)
    started = Output()
    running = asyncio.ensure_future(hub.execute("shared", request, started))
    await started.wait_for("go")
    # The first replica dies mid-command; the one that takes over re-issues the step.
    await hub.stop()
    with pytest.raises(errors.TemporaryError, match="hub stopped"):
        await running

    adopted = Output()
    result = await asyncio.wait_for(other_hub.execute("shared", request, adopted), 15)
    assert result.ok and b"done\n" in adopted.data
    assert marker.read_text() == "ran\n"  # adopted while it ran, not run a second time
    await agent.wait_log(f"command {request.command_id} from hub 127.0.0.1:{other_hub.port}")
    # Sent once more (a third replica, a retry): the journal answers.
    assert await other_hub.execute("shared", request) == result
    assert marker.read_text() == "ran\n"

    # With the first hub down, the second still runs new commands at once.
    fresh = await asyncio.wait_for(
        other_hub.execute("shared", ExecRequest(command_id="b-2", argv=["true"])), 10
    )
    assert fresh.ok
    await agent.wait_log(f"connection to hub 127.0.0.1:{hub.port} lost")


async def test_both_hubs_get_the_result_and_one_cannot_cancel_what_the_other_waits_for(
    hub: Hub, other_hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    agent = spawn_on(fleet, [hub, other_hub], "twice")
    for each in (hub, other_hub):
        await each.wait_for_agents(["twice"], timeout=15)
    request = counting(marker, 1.5)
    started = Output()
    first = asyncio.ensure_future(hub.execute("twice", request, started))
    await started.wait_for("go")
    second = asyncio.ensure_future(other_hub.execute("twice", request))
    await agent.wait_log("attached to it, not run again")
    # The replica that lost the environment gives up: the step its successor adopted runs on.
    await hub.cancel("twice", request.command_id)
    await agent.wait_log(f"hub 127.0.0.1:{hub.port} asked to cancel command")

    results = await asyncio.wait_for(asyncio.gather(first, second), 15)
    assert results[0] == results[1] and results[0].ok and not results[0].cancelled
    assert marker.read_text() == "ran\n"


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_hub_that_is_down_holds_up_nothing_and_sigterm_delivers_to_the_other(
    hub: Hub, other_hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    down = unused_udp_port()  # nothing answers there: the first hub is down from the start
    agent = spawn_on(fleet, [hub, other_hub], "lonely", first_port=down)
    await other_hub.wait_for_agents(["lonely"], timeout=15)
    result = await other_hub.execute("lonely", ExecRequest(command_id="b-1", argv=["true"]))
    assert result.ok

    marker = tmp_path / "runs"
    request = counting(marker, 1)
    started = Output()
    running = asyncio.ensure_future(other_hub.execute("lonely", request, started))
    await started.wait_for("go")
    agent.terminate()
    finished = await asyncio.wait_for(running, 15)
    assert finished.ok and started.data == b"go\ndone\n"
    assert await agent.wait_exit(15) == 0
    assert marker.read_text() == "ran\n"
    log = agent.log_text()
    assert f"connected to hub 127.0.0.1:{down}" not in log
    assert f"connected to hub 127.0.0.1:{other_hub.port} as 'lonely'" in log
