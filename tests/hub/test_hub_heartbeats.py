"""Heartbeats between a real hub and its agents: what each side sends and counts as life.

A current agent says ``answer_heartbeats: false`` in its HELLO: the hub acknowledges each
heartbeat with a bare QUIC ACK and sends no frame back, and the agent counts that ACK as
the hub being there. An older agent (no such field) still gets a HEARTBEAT back for
each of its own. Both are checked on the wire side the test can see: the frames the hub
queues on the control stream (an in-process hub) and what a raw QUIC peer receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.client import connect
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from agent import protocol
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.integration

HEARTBEAT = 0.5  # the fleet's agents' interval (conftest)


class Peer(QuicConnectionProtocol):
    """A raw QUIC client speaking the agent protocol by hand; keeps the frames it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[protocol.Frame] = []
        self._decoder = protocol.FrameDecoder()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self.frames.extend(self._decoder.feed(event.data))

    def say(self, stream_id: int, kind: protocol.FrameKind, meta: dict[str, Any]) -> None:
        self._quic.send_stream_data(stream_id, protocol.encode(kind, meta))
        self.transmit()

    def kinds(self) -> list[protocol.FrameKind]:
        return [frame.kind for frame in self.frames]


@contextlib.asynccontextmanager
async def peer(hub: Hub) -> AsyncIterator[Peer]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[protocol.ALPN])
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(
        "127.0.0.1", hub.port, configuration=configuration, create_protocol=Peer
    ) as connection:
        assert isinstance(connection, Peer)
        yield connection


def hello_meta(hub: Hub, name: str, *, old: bool = False) -> dict[str, Any]:
    """A HELLO as the current agent sends it, or (``old``) one from before the field."""
    assert hub.tokens is not None
    hello = protocol.Hello(
        name=name,
        token=hub.tokens.create(name),
        labels={},
        hostname="h",
        os="linux",
        agent_version="test",
        heartbeat=HEARTBEAT,
        instance=name,
        answer_heartbeats=False,
    )
    meta = protocol.hello_to_meta(hello)
    assert meta["answer_heartbeats"] is False
    if old:
        del meta["answer_heartbeats"]
    return meta


async def beat(connection: Peer, stream_id: int, times: int) -> None:
    for _ in range(times):
        connection.say(stream_id, protocol.FrameKind.HEARTBEAT, {"time": time.time()})
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)


async def test_an_agent_that_counts_acks_gets_no_heartbeat_frames_and_stays_connected(
    hub: Hub, fleet: Fleet
) -> None:
    agent = fleet.spawn(hub, "quiet")
    await hub.wait_for_agents(["quiet"], timeout=10)
    connection = hub._connections["quiet"]
    assert connection.answer_heartbeats is False  # what the agent asked for in its HELLO
    sent: list[protocol.FrameKind] = []
    original = connection.send

    def recording(stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if stream_id == connection.control_stream:
            sent.extend(frame.kind for frame in protocol.FrameDecoder().feed(data))
        original(stream_id, data, end_stream)

    connection.send = recording  # type: ignore[method-assign]
    first = hub.agents()[0]
    # Six heartbeat intervals: twice what either side waits before calling the other silent.
    await asyncio.sleep(6 * HEARTBEAT)

    now = hub.agents()[0]
    assert hub._connections["quiet"] is connection  # the same connection throughout
    assert now.connected_since == first.connected_since
    assert now.last_heartbeat > first.last_heartbeat  # the agent kept beating
    assert time.time() - now.last_heartbeat < 2 * HEARTBEAT
    assert protocol.FrameKind.HEARTBEAT not in sent  # ... and the hub sent no frame back
    log = agent.log_text()
    assert "silent" not in log and "lost" not in log, log
    assert log.count("connected to hub") == 1


async def test_an_older_agent_still_gets_a_heartbeat_back_for_each_of_its_own(
    hub: Hub,
) -> None:
    async with peer(hub) as old:
        control = old._quic.get_next_available_stream_id()
        old.say(control, protocol.FrameKind.HELLO, hello_meta(hub, "old", old=True))
        await hub.wait_for_agents(["old"], timeout=5)
        assert hub._connections["old"].answer_heartbeats is True
        await beat(old, control, 3)
        assert old.kinds() == [protocol.FrameKind.WELCOME] + [protocol.FrameKind.HEARTBEAT] * 3


async def test_a_new_agent_gets_welcome_and_nothing_for_its_heartbeats_but_acks(
    hub: Hub,
) -> None:
    async with peer(hub) as new:
        control = new._quic.get_next_available_stream_id()
        new.say(control, protocol.FrameKind.HELLO, hello_meta(hub, "new"))
        await hub.wait_for_agents(["new"], timeout=5)
        before = hub.agents()[0].last_heartbeat
        await beat(new, control, 3)
        assert new.kinds() == [protocol.FrameKind.WELCOME]
        assert hub.agents()[0].last_heartbeat > before
        # Every heartbeat was acknowledged: nothing of ours is left in flight.
        assert new._quic._loss.bytes_in_flight == 0
