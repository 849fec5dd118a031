"""What a peer that has not said HELLO can make the hub hold (issue 18).

A raw aioquic client stands for the stranger: it completes the QUIC and TLS handshake,
as anyone who can reach the hub's port can, then opens streams and sends megabytes
instead of a HELLO.  The hub offers it the limits of one HELLO (one stream,
``HELLO_MAX_BYTES``) and, should aioquic ever stop honouring those, its own caps close the
connection; either way the bytes the hub holds for strangers stay under the cap and
a real agent still connects.  Each attack runs twice: against the hub as it is, and
against a hub whose QUIC limits were left at aioquic's defaults, so that the caps in
the frame decoding are tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.client import connect
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from agent import protocol
from agent.protocol import ExecRequest
from reconciler.hub import server
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.integration

HEARTBEAT = 0.5
# What closes a stranger: the hub's own caps, or aioquic enforcing the limits it offered.
CLOSED_FOR_LIMITS = {
    server.CLOSE_PROTOCOL,
    QuicErrorCode.STREAM_LIMIT_ERROR,
    QuicErrorCode.FLOW_CONTROL_ERROR,
}


# A frame header announcing 16 MiB of data, which a decoder would buffer whole while
# waiting for the frame to complete: the attack of the issue.
HUGE_FRAME = protocol.HEADER.pack(protocol.VERSION, protocol.FrameKind.HELLO, 2, protocol.MAX_DATA)
FRAME_START = HUGE_FRAME[:3]


class Stranger(QuicConnectionProtocol):
    """A raw QUIC client that remembers how the hub closed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: events.ConnectionTerminated | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        # What the hub sends (an ERROR frame) is not read: no asyncio streams to leak.
        if isinstance(event, events.ConnectionTerminated):
            self.terminated = event

    def ignore_flow_control(self) -> None:
        """Behave as if the hub had offered aioquic's defaults, whatever it offered."""
        quic = self._quic
        quic._remote_max_streams_bidi = 1000
        quic._remote_max_data = 1 << 30
        quic._remote_max_stream_data_bidi_remote = 1 << 30
        for stream in quic._streams.values():
            stream.max_stream_data_remote = 1 << 30

    def send_raw(self, stream_id: int, data: bytes) -> None:
        self._quic.send_stream_data(stream_id, data)
        self.transmit()


def client_configuration() -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[protocol.ALPN])
    configuration.verify_mode = ssl.CERT_NONE  # a stranger verifies nothing
    return configuration


@contextlib.asynccontextmanager
async def stranger(hub: Hub) -> AsyncIterator[Stranger]:
    """A handshaken connection to ``hub`` that has said nothing yet."""
    async with connect(
        "127.0.0.1", hub.port, configuration=client_configuration(), create_protocol=Stranger
    ) as peer:
        assert isinstance(peer, Stranger)
        yield peer


@contextlib.asynccontextmanager
async def bounded_hub(tmp_path: Path, **bounds: int) -> AsyncIterator[Hub]:
    """A started hub with the stranger bounds given (``preauth_total``, …)."""
    hub = Hub(tmp_path / "data", port=0, heartbeat_interval=HEARTBEAT, **bounds)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


class Watch:
    """Samples the hub's stranger bookkeeping at every loop turn while an attack runs."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.most_bytes = 0
        self.most_connections = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            connections, held = self.hub.preauth_usage()
            self.most_bytes = max(self.most_bytes, held)
            self.most_connections = max(self.most_connections, connections)
            await asyncio.sleep(0)

    def __enter__(self) -> Watch:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture(params=["offered limits", "aioquic default limits"])
def transport_limits(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Run a test with the hub's lowered QUIC limits, and once with aioquic's defaults."""
    if request.param == "aioquic default limits":
        monkeypatch.setattr(server, "_offer_before_hello", lambda quic: None)
    yield request.param


@pytest.fixture
async def guarded(tmp_path: Path, transport_limits: str) -> AsyncIterator[Hub]:
    """A started hub (after ``transport_limits`` chose what it offers strangers)."""
    instance = Hub(tmp_path / "data", port=0, heartbeat_interval=HEARTBEAT)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def closed(peer: Stranger, timeout: float = 10.0) -> events.ConnectionTerminated:
    """Wait for the hub to close ``peer``; how it did."""
    await asyncio.wait_for(peer.wait_closed(), timeout)
    assert peer.terminated is not None
    return peer.terminated


async def no_strangers(hub: Hub) -> None:
    for _ in range(200):
        if hub.preauth_usage() == (0, 0):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"strangers left behind: {hub.preauth_usage()}")


async def agent_works(hub: Hub, fleet: Fleet, name: str) -> None:
    """A real agent connects to ``hub`` and streams more output than a stranger may send."""
    fleet.spawn(hub, name)
    await hub.wait_for_agents([name], timeout=20)
    chunks: list[bytes] = []
    result = await hub.execute(
        name,
        ExecRequest(command_id=f"big-{name}", argv=["head", "-c", "3000000", "/dev/zero"]),
        on_output=lambda stream, data: chunks.append(data),
    )
    assert result.ok and sum(map(len, chunks)) == 3_000_000


async def test_a_second_stream_before_hello_closes_the_connection(
    guarded: Hub, fleet: Fleet, transport_limits: str
) -> None:
    with Watch(guarded) as watch:
        async with stranger(guarded) as peer:
            if transport_limits == "offered limits":
                # The hub offered one stream: a well-behaved client cannot open a second.
                assert peer._quic._remote_max_streams_bidi == 1
            peer.ignore_flow_control()
            for _ in range(50):  # the start of a frame on each: nothing to refuse yet
                peer.send_raw(peer._quic.get_next_available_stream_id(), FRAME_START)
            how = await closed(peer)
    assert how.error_code in CLOSED_FOR_LIMITS, how
    if transport_limits == "aioquic default limits":
        assert how.error_code == server.CLOSE_PROTOCOL
        assert "only the control stream" in how.reason_phrase
    assert watch.most_bytes <= server.HELLO_MAX_BYTES
    await no_strangers(guarded)
    await agent_works(guarded, fleet, "after-streams")


async def test_megabytes_before_hello_close_the_connection_holding_at_most_the_cap(
    guarded: Hub, fleet: Fleet, transport_limits: str
) -> None:
    with Watch(guarded) as watch:
        async with stranger(guarded) as peer:
            stream_id = peer._quic.get_next_available_stream_id()
            peer.ignore_flow_control()
            peer.send_raw(stream_id, HUGE_FRAME + b"{}")
            for _ in range(64):  # 4 MiB in 64 KiB pieces
                if peer.terminated is not None:
                    break
                peer.send_raw(stream_id, b"\0" * (64 * 1024))
                await asyncio.sleep(0)
            how = await closed(peer)
    assert how.error_code in CLOSED_FOR_LIMITS, how
    if transport_limits == "aioquic default limits":
        assert how.error_code == server.CLOSE_PROTOCOL
        assert "64 KiB sent before HELLO" in how.reason_phrase
    assert watch.most_bytes <= server.HELLO_MAX_BYTES
    await no_strangers(guarded)
    await agent_works(guarded, fleet, "after-bytes")


async def test_a_hello_within_the_cap_is_still_welcomed_after_coming_in_pieces(
    hub: Hub,
) -> None:
    assert hub.tokens is not None
    hello = protocol.Hello(
        name="slow",
        token=hub.tokens.create("slow"),
        labels={f"label-{i}": "x" * 100 for i in range(100)},  # a 12 KiB HELLO
        hostname="h",
        os="linux",
        agent_version="test",
        heartbeat=HEARTBEAT,
    )
    frame = protocol.encode(protocol.FrameKind.HELLO, protocol.hello_to_meta(hello))
    assert 10_000 < len(frame) < server.HELLO_MAX_BYTES
    async with stranger(hub) as peer:
        stream_id = peer._quic.get_next_available_stream_id()
        for start in range(0, len(frame), 1000):
            peer.send_raw(stream_id, frame[start : start + 1000])
            await asyncio.sleep(0)
        await hub.wait_for_agents(["slow"], timeout=10)
        assert hub.preauth_usage() == (0, 0)
        assert peer.terminated is None


async def test_strangers_per_address_are_bounded_and_time_out(
    tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "HELLO_TIMEOUT", 1.0)
    async with bounded_hub(tmp_path, preauth_per_address=3) as hub:
        async with contextlib.AsyncExitStack() as stack:
            peers = [await stack.enter_async_context(stranger(hub)) for _ in range(3)]
            assert hub.preauth_usage()[0] == 3
            # A fourth from the same address is closed at once, saying why.
            fourth = await stack.enter_async_context(stranger(hub))
            how = await closed(fourth)
            assert how.error_code == server.CLOSE_BUSY and "hub busy" in how.reason_phrase
            assert hub.preauth_usage()[0] == 3
            # Strangers that never say HELLO are closed after HELLO_TIMEOUT and no longer
            # count; the real agent, refused while they held the address, gets in.
            agent = fleet.spawn(hub, "patient")
            for peer in peers:
                how = await closed(peer)
                assert how.error_code == server.CLOSE_AUTH and "no valid HELLO" in how.reason_phrase
            await hub.wait_for_agents(["patient"], timeout=20)
        assert hub.preauth_usage() == (0, 0)
        await agent.wait_log("connected to hub")


async def test_over_the_total_new_connections_are_not_answered_until_a_place_is_free(
    tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server, "HELLO_TIMEOUT", 2.0)
    async with bounded_hub(tmp_path, preauth_total=2) as hub:
        async with contextlib.AsyncExitStack() as stack:
            with Watch(hub) as watch:
                peers = [await stack.enter_async_context(stranger(hub)) for _ in range(2)]
                assert hub.preauth_usage()[0] == 2
                # A third gets no answer at all (no handshake, nothing held for it) while
                # the two are open; its QUIC keeps sending its first packet.
                third = asyncio.ensure_future(stack.enter_async_context(stranger(hub)))
                done, _ = await asyncio.wait({third}, timeout=1.5)
                assert not done
                assert watch.most_connections == 2
                # The two time out without a HELLO; the third's next try gets in.
                for peer in peers:
                    how = await closed(peer)
                    assert how.error_code == server.CLOSE_AUTH
                newcomer = await asyncio.wait_for(third, 10)
                assert newcomer.terminated is None
                assert watch.most_connections == 2
        assert "not answered while 2 connections are still to say HELLO" in caplog.text
        # And an agent gets in as soon as there is room.
        agent = fleet.spawn(hub, "next")
        await hub.wait_for_agents(["next"], timeout=20)
        await agent.wait_log("connected to hub")
        assert hub.preauth_usage() == (0, 0)


async def test_while_busy_a_newcomer_proves_its_address_first_and_a_forged_one_takes_no_place(
    tmp_path: Path,
) -> None:
    """Half the places taken: a new connection gets a QUIC Retry and only a peer that
    answers it (so it owns its source address) is given a place."""
    async with bounded_hub(tmp_path, preauth_total=4) as hub, contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(stranger(hub))
        assert hub.preauth_usage()[0] == 2  # half: busy from here on
        # What a forger sends: a client's first flight, from an address that never
        # reads the answer. The answer is a Retry, and the hub holds nothing for it.
        forged = QuicConnection(configuration=client_configuration())
        forged.connect(("127.0.0.1", hub.port), now=time.monotonic())
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Listener(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Listener, remote_addr=("127.0.0.1", hub.port)
        )
        try:
            for datagram, _addr in forged.datagrams_to_send(now=time.monotonic()):
                transport.sendto(datagram)
            answer = await asyncio.wait_for(answers.get(), 5)
            header = pull_quic_header(Buffer(data=answer), host_cid_length=8)
            assert header.packet_type == QuicPacketType.RETRY
            await asyncio.sleep(0.2)
            assert hub.preauth_usage()[0] == 2
        finally:
            transport.close()
        # A real peer follows the Retry (aioquic's client does) and gets a place.
        third = await stack.enter_async_context(stranger(hub))
        assert third.terminated is None and hub.preauth_usage()[0] == 3
