"""The hub's QUIC server and the command API the engine uses (the only hub module importing aioquic).

``Hub`` listens on one UDP port.  Each agent connection must open with HELLO and a valid
token; anything else gets an ERROR frame saying why and the connection is closed.  The
hub keeps the registry of connected agents, answers heartbeats, declares an agent lost
after 3 missed heartbeats (its own announced interval), and disconnects agents whose token
is revoked (also when ``quicflow agent-token revoke`` changed the token file from another
process: the watchdog looks at the file at least once a second), cancelling what they run.

Until its HELLO is answered a peer is a stranger and may make the hub hold little: QUIC
limits of one stream and ``HELLO_MAX_BYTES`` (raised once it is welcomed), the same caps
again where frames are decoded (a second stream, or more bytes, closes the connection),
``HELLO_TIMEOUT`` to say HELLO, and at most ``PREAUTH_PER_ADDRESS`` such connections
from one address (more are closed: ``hub busy``) and ``PREAUTH_TOTAL`` in all: while
that many are open the hub does not take on new ones (``_Server`` drops their first
packets, and the peers' QUIC sends them again), so a reconnect storm is let in a few
hundred at a time instead of all at once; from half of that on, a newcomer proves its
source address with a QUIC Retry first, so forged packets take no place.

One name, one agent: a HELLO for a name that is already connected is the same agent back
(same process ``instance``: the old connection is replaced) or a second agent.  For a
second agent the hub PINGs the connected one; if it answers within ``claim_timeout`` the
newcomer is refused with a ``duplicate`` ERROR naming the connected agent, and only if
it does not (the old connection is dead: a killed agent, a changed address) does the
newcomer take the name.  The registry is mirrored to ``agents.json`` (``snapshots``) for
``quicflow agents``.

Commands: ``execute``/``git_pull`` open one stream per command and resolve with the
``ExecResult`` from the agent's EXIT frame; output chunks go to ``on_output`` in seq order,
each exactly once.  A command survives its agent's reconnect: when the agent says HELLO
again, the hub re-sends every pending command with ``attach_only`` and the next seq it
expects, and the agent replays what was missed and delivers the result.  A command whose
agent stays away longer than ``reconnect_grace`` fails with ``errors.AgentLost``: its fate
is unknown until ``collect`` gets its result from the agent once it is back.

Protocol kinds and encoding: see ``agent.protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

import agent
from agent import protocol
from agent.protocol import ExecRequest, ExecResult, GitPullRequest, StatusReport
from agent.sending import CoalescedSending
from reconciler import errors
from reconciler.hub import registry, snapshots, tls, tokens

logger = logging.getLogger(__name__)

OutputCallback = Callable[[str, bytes], Any]
AgentInfo = registry.AgentInfo

__all__ = [
    "AgentInfo",
    "ExecRequest",
    "ExecResult",
    "GitPullRequest",
    "Hub",
    "OutputCallback",
    "StatusReport",
]

# QUIC application error codes the hub closes connections with.
CLOSE_NORMAL = 0
CLOSE_AUTH = 0x201
CLOSE_PROTOCOL = 0x202
CLOSE_LOST = 0x203
CLOSE_REPLACED = 0x204
CLOSE_REVOKED = 0x205
CLOSE_DUPLICATE = 0x206
CLOSE_BUSY = protocol.CLOSE_BUSY
# 200 agents connecting at once overflow the default ~200 KB UDP receive buffer and cost
# seconds of retransmits; 4 MiB holds several full handshake flights of all of them.
SOCKET_BUFFER = 4 << 20
# Let an ERROR frame reach the agent before the CONNECTION_CLOSE that follows it.
ERROR_CLOSE_DELAY = 0.05
HELLO_TIMEOUT = 10.0
# Until its HELLO is answered a peer is a stranger: it may open one stream (the control
# stream) and send this much on it.  A HELLO is well under 1 KiB; labels make it grow.
HELLO_MAX_BYTES = 64 * 1024
# Connections still to say HELLO (in their handshake, or not yet welcomed). From one
# source address: a newcomer over the bound is closed once its handshake is done
# (CLOSE_BUSY, saying why) and the agent retries with backoff. In all: while that many
# are open, new connections are not answered at all (``_Server``). Each one costs the
# hub a few ms of CPU for its handshake and holds at most HELLO_MAX_BYTES, so 256 at a
# time are through in about a second, well within the agents' 10 s handshake timeout.
PREAUTH_PER_ADDRESS = 64
PREAUTH_TOTAL = 256
# Streams an agent may open once welcomed (aioquic's default; it opens only one).
STREAMS_AFTER_HELLO = 128
# How long a connected agent has to answer a PING when a second one claims its name.
CLAIM_TIMEOUT = 2.0
# Requests of lost commands remembered for ``collect`` (the oldest are forgotten first).
LOST_KEPT = 10_000


class _Tally:
    """Counts events that a flood could repeat thousands of times a second, so that they
    are logged at most once per ``interval`` s, with how many there were."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._count = 0
        self._reported = float("-inf")

    def add(self) -> int:
        """Count one; how many to report now (counted since the last report), else 0."""
        self._count += 1
        now = time.monotonic()
        if now - self._reported < self.interval:
            return 0
        count, self._count, self._reported = self._count, 0, now
        return count


@dataclass(slots=True)
class _Pending:
    """A command sent to an agent whose result has not arrived (hub-internal, mutable)."""

    agent: str
    request: protocol.Request
    on_output: OutputCallback | None
    future: asyncio.Future[ExecResult]
    next_seq: int = 0
    cancel_requested: bool = False
    disconnected_at: float | None = None


def _offer_before_hello(quic: QuicConnection) -> None:
    """Offer a peer that has not said HELLO the QUIC limits of one HELLO, not of an agent.

    aioquic has no per-connection setting for them: they are ``QuicConnection`` attributes
    read when it writes its transport parameters, on the first datagram (after this).
    Should they move in a later aioquic, the stream and byte caps of ``_admissible`` still
    hold; these only keep aioquic itself from buffering more than a HELLO's worth.
    """
    try:
        for limit, value in (
            (quic._local_max_data, HELLO_MAX_BYTES),
            (quic._local_max_streams_bidi, 1),
            (quic._local_max_streams_uni, 0),
        ):
            limit.value = limit.sent = value
        quic._local_max_stream_data_bidi_remote = HELLO_MAX_BYTES
        quic._local_max_stream_data_uni = 0
    except AttributeError:  # pragma: no cover - another aioquic
        logger.debug("aioquic has no connection limits to lower before HELLO", exc_info=True)


def _offer_after_hello(quic: QuicConnection) -> None:
    """Raise the limits ``_offer_before_hello`` lowered; aioquic sends MAX_DATA/MAX_STREAMS."""
    try:
        configuration = quic._configuration
        quic._local_max_data.value = max(quic._local_max_data.value, configuration.max_data)
        quic._local_max_streams_bidi.value = STREAMS_AFTER_HELLO
        quic._local_max_streams_uni.value = STREAMS_AFTER_HELLO
        # For streams opened from now on; the control stream's window grows by itself.
        quic._local_max_stream_data_bidi_remote = configuration.max_stream_data
        quic._local_max_stream_data_uni = configuration.max_stream_data
    except AttributeError:  # pragma: no cover - another aioquic
        logger.debug("aioquic has no connection limits to raise after HELLO", exc_info=True)


class _AgentConnection(CoalescedSending, QuicConnectionProtocol):
    """One agent's QUIC connection: frame decoding and sending; the logic lives in ``Hub``."""

    def __init__(self, *args: Any, hub: Hub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.name: str | None = None
        self.token = ""
        self.heartbeat = hub.heartbeat_interval
        # Whether the agent wants a HEARTBEAT back for each of its own (older agents do).
        self.answer_heartbeats = True
        self.instance = ""
        self.address = ""
        self.control_stream: int | None = None
        self.last_heard = time.monotonic()
        self.closed = False
        self.commands: dict[int, _Pending] = {}
        self._decoders: dict[int, protocol.FrameDecoder] = {}
        # Until ``Hub._admit``: one stream and HELLO_MAX_BYTES (``_admissible``), and the
        # source address counted among those still to say HELLO (``Hub._preauth``).
        self.admitted = False
        self.preauth_address: str | None = None
        self._preauth_stream: int | None = None
        self._preauth_bytes = 0
        self._over_limits = False
        self._close_when_handshaken: tuple[int, str] | None = None
        _offer_before_hello(self._quic)
        # A peer that never says a valid HELLO does not get to hold a connection open.
        self._loop.call_later(HELLO_TIMEOUT, self._require_hello)

    def _require_hello(self) -> None:
        if self.name is None and not self.closed:
            self.close_with(CLOSE_AUTH, f"no valid HELLO within {HELLO_TIMEOUT:g} s")
        if not self.admitted:
            self.hub._release_preauth(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Note the agent's address, then feed the datagram to aioquic."""
        if self.address:
            super().datagram_received(data, addr)
            return
        self.address = f"{addr[0]}:{addr[1]}"
        super().datagram_received(data, addr)
        # After aioquic has the peer's path, so that a refusal reaches it.
        self.hub._count_preauth(self, str(addr[0]))

    def preauth_held(self) -> int:
        """Stream bytes received and not yet decoded into frames (before HELLO: all of it)."""
        return sum(decoder.pending for decoder in self._decoders.values())

    def refuse_when_handshaken(self, close_code: int, reason: str) -> None:
        """Close once the handshake is done (before it, QUIC would drop code and reason)."""
        self._over_limits = True  # nothing it sends is read
        if self._quic._handshake_complete:
            self.close_with(close_code, reason)
        else:
            self._close_when_handshaken = (close_code, reason)

    def welcomed(self) -> None:
        """HELLO accepted: lift the limits a stranger had (``_offer_before_hello``)."""
        self.admitted = True
        _offer_after_hello(self._quic)

    def new_stream_id(self) -> int:
        """A fresh server-initiated bidirectional stream id."""
        return self._quic.get_next_available_stream_id()

    def refuse(self, code: str, reason: str, close_code: int) -> None:
        """Tell the agent why (ERROR frame, and the close reason), then close."""
        if self.control_stream is not None:
            self.send(
                self.control_stream,
                protocol.encode(protocol.FrameKind.ERROR, {"code": code, "reason": reason}),
            )
        self._loop.call_later(ERROR_CLOSE_DELAY, self.close_with, close_code, reason)

    def close_with(self, close_code: int, reason: str) -> None:
        """Close the connection (once)."""
        if not self.closed:
            self.close(error_code=close_code, reason_phrase=reason)

    def _admissible(self, stream_id: int, size: int) -> bool:
        """Before HELLO: data on the first stream only, HELLO_MAX_BYTES in all; else close."""
        if self._over_limits:
            return False  # closing already: drop what is still in flight
        if self._preauth_stream is None:
            self._preauth_stream = stream_id
        self._preauth_bytes += size
        if stream_id != self._preauth_stream:
            reason = "only the control stream may be opened before HELLO is answered"
        elif self._preauth_bytes > HELLO_MAX_BYTES:
            reason = f"more than {HELLO_MAX_BYTES // 1024} KiB sent before HELLO was answered"
        else:
            return True
        self._over_limits = True
        self._decoders.clear()
        logger.warning("closed a connection from %s: %s", self.address, reason)
        if self.control_stream is None:
            self.control_stream = self._preauth_stream  # so that the ERROR frame reaches it
        self.refuse("protocol", reason, CLOSE_PROTOCOL)
        return False

    def quic_event_received(self, event: events.QuicEvent) -> None:
        """Decode stream data into frames; report the end of the connection."""
        if isinstance(event, events.StreamDataReceived):
            if not self.admitted and not self._admissible(event.stream_id, len(event.data)):
                return
            decoder = self._decoders.setdefault(event.stream_id, protocol.FrameDecoder())
            try:
                frames = decoder.feed(event.data)
            except protocol.ProtocolError as error:
                self.refuse("protocol", str(error), CLOSE_PROTOCOL)
                return
            if frames:
                self.hub._on_frames(self, event.stream_id, frames)
            if event.end_stream:
                self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.StreamReset):
            if not self.admitted and not self._admissible(event.stream_id, 0):
                return
            self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.HandshakeCompleted):
            if self._close_when_handshaken is not None:
                self.close_with(*self._close_when_handshaken)
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = True
            self.hub._release_preauth(self)
            self.hub._on_terminated(self)


class _ConnectionIds(dict[bytes, QuicConnectionProtocol]):
    """aioquic's connection id → protocol map, with each protocol's ids indexed as well."""

    def __init__(self) -> None:
        super().__init__()
        self.of: dict[QuicConnectionProtocol, set[bytes]] = {}

    def __setitem__(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        previous = self.get(cid)
        if previous is not None and previous is not protocol:
            self._forget(previous, cid)
        super().__setitem__(cid, protocol)
        self.of.setdefault(protocol, set()).add(cid)

    def __delitem__(self, cid: bytes) -> None:
        protocol = self[cid]
        super().__delitem__(cid)
        self._forget(protocol, cid)

    def clear(self) -> None:
        super().clear()
        self.of.clear()

    def _forget(self, protocol: QuicConnectionProtocol, cid: bytes) -> None:
        cids = self.of.get(protocol)
        if cids is not None:
            cids.discard(cid)
            if not cids:
                del self.of[protocol]


class _Server(QuicServer):
    """aioquic's server, without its linear scan when a connection ends, and with a
    bound on the connections it takes on at a time.

    ``QuicServer._connection_terminated`` walks every connection id of every connection
    to find the ended one's: ~60 ms each with 4,000 agents connected, so a storm of
    failed attempts after a hub restart stalled the loop until connected agents missed
    their heartbeats. With the ids indexed per connection it costs what that one holds.

    While ``full()`` says so, a datagram that would open a new connection (an Initial
    packet for a connection id it does not know) is dropped before any crypto is done,
    as a kernel drops a SYN when the listen backlog is full: the client's QUIC sends it
    again (after ~1, 2, 4 s) and gets in once the handshakes in progress are done. A
    handshake costs the hub milliseconds of CPU; taking on thousands at once after a
    restart made each one too slow to finish before its peer gave up, and starved the
    heartbeats of the agents already connected.

    While ``busy()`` says so (before ``full``), a new connection must first prove its
    source address with a QUIC Retry (RFC 9000 section 8.1.2): one more round trip,
    an AES-GCM token, no connection state. Packets with forged source addresses then
    take no place at all -- without it they could hold the places until HELLO_TIMEOUT
    and keep every real agent out. aioquic's Retry is on or off for the whole server, so
    it is switched on per packet: for a new connection while busy, and for any Initial
    that carries a token (so that one issued while busy is still checked after).
    """

    def __init__(
        self,
        *,
        full: Callable[[], bool],
        busy: Callable[[], bool],
        dropped: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._protocols = _ConnectionIds()
        self._full = full
        self._busy = busy
        self._dropped = dropped
        self._tokens = QuicRetryTokenHandler()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        data = bytes(data)
        header = self._opening_header(data)
        if header is not None:
            if self._full():
                self._dropped()
                return
            self._retry = self._tokens if header.token or self._busy() else None
        super().datagram_received(data, addr)

    def _opening_header(self, data: bytes) -> QuicHeader | None:
        """The header of an Initial packet for a new connection, else None (cheaply: the
        packets of connections already open have short headers and are not parsed)."""
        if not data or not data[0] & 0x80:
            return None
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return None  # aioquic ignores it as well
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.destination_cid in self._protocols
        ):
            return None
        return header

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        assert isinstance(self._protocols, _ConnectionIds)
        for cid in list(self._protocols.of.get(protocol, ())):
            del self._protocols[cid]


class Hub:
    """The QUIC hub: accepts agents, keeps the registry, runs commands on agents."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 4433,
        heartbeat_interval: float = 15.0,
        *,
        reconnect_grace: float | None = None,
        certificate: Path | None = None,
        key: Path | None = None,
        names: Sequence[str] = (),
        socket_buffer: int = SOCKET_BUFFER,
        claim_timeout: float = CLAIM_TIMEOUT,
        preauth_per_address: int = PREAUTH_PER_ADDRESS,
        preauth_total: int = PREAUTH_TOTAL,
    ) -> None:
        """``data_dir`` is the hub's own directory (``locations.hub_dir`` of the data dir).

        ``names`` are the DNS names and addresses agents reach the hub by, for the
        certificate generated on first start (``tls.ensure_identity``).
        """
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        # How long a command waits for its disconnected agent to come back.
        self.reconnect_grace = (
            4 * heartbeat_interval if reconnect_grace is None else reconnect_grace
        )
        self._certificate = certificate
        self._key = key
        self._names = tuple(names)
        self._socket_buffer = socket_buffer
        self.claim_timeout = claim_timeout
        self.preauth_per_address = preauth_per_address
        self.preauth_total = preauth_total
        # Connections still to say HELLO, and how many of them each source address has.
        self._preauth: set[_AgentConnection] = set()
        self._preauth_by_address: Counter[str] = Counter()
        self._busy_refused = _Tally()
        self._unanswered = _Tally()
        self.registry = registry.Registry()
        self.tokens: tokens.TokenStore | None = None
        self.identity: tls.HubIdentity | None = None
        self._connections: dict[str, _AgentConnection] = {}
        # Names a second agent is claiming while the hub probes the connected one.
        self._claims: dict[str, _AgentConnection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._snapshot_due = True
        self._snapshot_written = 0.0
        self._pending: dict[tuple[str, str], _Pending] = {}
        # Requests of commands whose agent was lost, for ``collect`` (oldest first).
        self._lost: dict[tuple[str, str], protocol.Request] = {}
        self._server: QuicServer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load or create the TLS identity and token store, bind the UDP port, start serving."""
        self.identity = tls.ensure_identity(
            self.data_dir, self._certificate, self._key, self._names
        )
        self._check_names(self.identity)
        self.tokens = tokens.TokenStore(self.data_dir)
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[protocol.ALPN],
            idle_timeout=max(4 * self.heartbeat_interval, 10.0),
            max_data=8 << 20,
            max_stream_data=4 << 20,
        )
        configuration.load_cert_chain(str(self.identity.certificate), str(self.identity.key))
        loop = asyncio.get_running_loop()
        sock = self._bind()
        create = functools.partial(_AgentConnection, hub=self)
        transport, server = await loop.create_datagram_endpoint(
            lambda: _Server(
                configuration=configuration,
                create_protocol=create,
                full=self._handshakes_full,
                busy=self._handshakes_busy,
                dropped=self._count_unanswered,
            ),
            sock=sock,
        )
        self._transport, self._server = transport, server
        self.port = sock.getsockname()[1]
        self._watchdog = loop.create_task(self._watch(), name="hub watchdog")
        logger.info(
            "hub listening on %s:%d (udp), certificate SHA-256 %s, tokens in %s",
            self.host,
            self.port,
            self.identity.fingerprint(),
            self.tokens.path,
        )

    def _check_names(self, identity: tls.HubIdentity) -> None:
        """Warn when the certificate in use lacks a configured name (it is never replaced
        here: a new certificate would lock out every agent pinned to the old one)."""
        missing = tls.missing_names(identity.certificate, self._names)
        if not missing:
            return
        if self._certificate is not None:
            advice = "issue one that names them and restart"
        else:
            advice = (
                f"to rotate: stop serve, delete {identity.certificate} and {identity.key},"
                " start serve (a new one is made with the names), then re-pin every agent"
                " with 'quicflow hub fingerprint' (or give --ca agents the new certificate)"
            )
        logger.warning(
            "hub certificate %s does not name %s: agents verifying the hub with --ca cannot"
            " reach it by %s (pinned agents are not affected); %s",
            identity.certificate,
            ", ".join(missing),
            "that name" if len(missing) == 1 else "those names",
            advice,
        )

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for force, plain in (
                (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
            ):
                try:
                    # The FORCE variants pass net.core.*mem_max when we have CAP_NET_ADMIN.
                    if force is None:
                        raise PermissionError
                    sock.setsockopt(socket.SOL_SOCKET, force, self._socket_buffer)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, self._socket_buffer)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Close every agent connection, fail pending commands, stop listening."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(
                    errors.TemporaryError(
                        f"hub stopped while {pending.agent!r} ran {pending.request.command_id!r}"
                    )
                )
        self._pending.clear()
        self.close_connections()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._connections.clear()
        self._preauth.clear()
        self._preauth_by_address.clear()
        for info in self.registry.all():
            self.registry.remove(info.name)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                snapshots.write, self.data_dir, self._snapshot(time.time(), running=False)
            )
        # Let the CONNECTION_CLOSE datagrams and the transport's own close run.
        await asyncio.sleep(0)

    def close_connections(self) -> None:
        """Close every agent connection now, saying the hub is shutting down.

        Synchronous (a datagram each, sent at once), so a process about to end can still
        tell its agents, which then reconnect as soon as a hub listens again.
        """
        for connection in list(self._connections.values()):
            connection.close_with(CLOSE_NORMAL, "hub shutting down")

    # --- registry -----------------------------------------------------------------------

    def agents(self) -> list[AgentInfo]:
        """Every connected agent, by name."""
        return self.registry.all()

    def select(
        self,
        names: Sequence[str] | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> list[AgentInfo]:
        """Connected agents with one of ``names`` (if given) carrying all ``selector`` labels."""
        return self.registry.select(names, selector)

    def preauth_usage(self) -> tuple[int, int]:
        """Connections still to say HELLO, and the stream bytes they make the hub hold."""
        return len(self._preauth), sum(c.preauth_held() for c in self._preauth)

    def commands_in_flight(self) -> int:
        """Commands sent to agents whose result has not come back yet."""
        return len(self._pending)

    def status(self, agent_name: str) -> StatusReport | None:
        """The latest status report of ``agent_name``, if connected and reported."""
        info = self.registry.get(agent_name)
        return None if info is None else info.status

    async def wait_for_agents(self, names: Sequence[str], timeout: float) -> list[AgentInfo]:
        """Wait until every agent in ``names`` is connected; TemporaryError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [name for name in names if self.registry.get(name) is None]
            if not missing:
                return [info for name in names if (info := self.registry.get(name))]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.TemporaryError(f"agents not connected after {timeout} s: {missing}")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def revoke(self, agent_name: str) -> bool:
        """Revoke the token of ``agent_name`` and disconnect it; return whether it had one."""
        assert self.tokens is not None, "hub not started"
        revoked = self.tokens.revoke(agent_name)
        self._enforce_tokens()
        return revoked

    # --- commands -----------------------------------------------------------------------

    async def execute(
        self,
        agent_name: str,
        request: ExecRequest,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Run ``request`` on ``agent_name``; stream output to ``on_output``; return the result."""
        return await self._command(agent_name, request, on_output)

    async def git_pull(
        self,
        agent_name: str,
        request: GitPullRequest,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Fetch and check out a ref on ``agent_name`` (then its restart script)."""
        return await self._command(agent_name, request, on_output)

    async def cancel(self, agent_name: str, command_id: str) -> None:
        """Ask ``agent_name`` to stop ``command_id`` (its result then says ``cancelled``)."""
        pending = self._pending.get((agent_name, command_id))
        if pending is not None:
            # Remembered so that a re-attach after a reconnect still carries the cancel.
            pending.cancel_requested = True
        connection = self._connections.get(agent_name)
        if connection is None:
            if pending is None:
                raise errors.TemporaryError(f"agent {agent_name!r} is not connected")
            return
        assert connection.control_stream is not None
        connection.send(
            connection.control_stream,
            protocol.encode(protocol.FrameKind.CANCEL, {"command_id": command_id}),
        )

    async def collect(self, agent_name: str, command_id: str, timeout: float) -> ExecResult:
        """The result of a command whose agent was lost, once the agent is back and reports it.

        The agent answers from its journal -- the command ran to its end, or the restarted
        agent killed what survived of it -- or re-attaches while it still runs.  Raises
        ``AgentLost`` when no result comes within ``timeout`` s; the command is not
        cancelled then (nobody would learn how it ended).
        """
        key = (agent_name, command_id)
        # Never run: asked with attach_only, an agent answers for a command, it starts none.
        request = self._lost.get(key) or ExecRequest(command_id=command_id, argv=["true"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                await self.wait_for_agents([agent_name], remaining)
            except errors.TemporaryError:
                break
            connection = self._connections.get(agent_name)
            if connection is None:
                continue
            pending = self._pending.get(key)
            if pending is None:
                pending = _Pending(agent_name, request, None, loop.create_future())
                # Given up on, it may still fail later: that is no news to anybody.
                pending.future.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._pending[key] = pending
                self._send_command(connection, pending, attach_only=True)
            future = pending.future
            await asyncio.wait({future}, timeout=max(0.0, deadline - loop.time()))
            if not future.done():
                break
            if future.cancelled():
                continue  # an ``execute`` of the same id gave up on it: ask again
            failure = future.exception()
            if failure is None:
                self._lost.pop(key, None)
                return future.result()
            if not isinstance(failure, errors.AgentLost):
                raise failure  # the hub stopped, or the agent's token was revoked
            # Lost again before it reported: wait for it to come back once more.
        if agent_name in self._connections:
            why = f"is back, but {command_id!r} did not end within {timeout:g} s: it still runs"
        else:
            why = (
                f"(lost while running {command_id!r}) did not report back within {timeout:g} s;"
                " the command's fate is unknown"
            )
        raise errors.AgentLost(f"agent {agent_name!r} {why}", agent_name, command_id)

    async def _command(
        self, agent_name: str, request: protocol.Request, on_output: OutputCallback | None
    ) -> ExecResult:
        connection = self._connections.get(agent_name)
        if connection is None:
            raise errors.TemporaryError(
                f"agent {agent_name!r} is not connected", delay=self.heartbeat_interval
            )
        key = (agent_name, request.command_id)
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending(
                agent_name, request, on_output, asyncio.get_running_loop().create_future()
            )
            self._pending[key] = pending
            self._send_command(connection, pending, attach_only=False)
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            # The caller gave up: stop the command on the agent instead of orphaning it.
            if self._pending.pop(key, None) is not None and not pending.future.done():
                pending.future.cancel()
                live = self._connections.get(agent_name)
                if live is not None and live.control_stream is not None:
                    live.send(
                        live.control_stream,
                        protocol.encode(
                            protocol.FrameKind.CANCEL, {"command_id": request.command_id}
                        ),
                    )
            raise

    def _send_command(
        self, connection: _AgentConnection, pending: _Pending, attach_only: bool
    ) -> None:
        stream_id = connection.new_stream_id()
        connection.commands[stream_id] = pending
        pending.disconnected_at = None
        connection.send(
            stream_id,
            protocol.request_frame(
                pending.request,
                resume_seq=pending.next_seq,
                attach_only=attach_only,
                cancel=pending.cancel_requested,
            ),
        )

    # --- frames from agents -------------------------------------------------------------

    def _on_frames(
        self, connection: _AgentConnection, stream_id: int, frames: list[protocol.Frame]
    ) -> None:
        if connection.name is None:
            self._on_unauthenticated(connection, stream_id, frames[0])
            return
        if stream_id == connection.control_stream:
            for frame in frames:
                self._on_control(connection, frame)
            return
        pending = connection.commands.get(stream_id)
        acknowledged = False
        for frame in frames:
            if frame.kind is protocol.FrameKind.OUTPUT and pending is not None:
                self._on_output(pending, frame)
                acknowledged = True
            elif frame.kind is protocol.FrameKind.EXIT:
                self._on_exit(connection, stream_id, pending, frame)
                acknowledged = False
        if acknowledged and pending is not None:
            connection.send(
                stream_id, protocol.encode(protocol.FrameKind.ACK, {"seq": pending.next_seq - 1})
            )

    def _handshakes_full(self) -> bool:
        return len(self._preauth) >= self.preauth_total

    def _handshakes_busy(self) -> bool:
        """Half the places taken: newcomers prove their address first (``_Server``)."""
        return 2 * len(self._preauth) >= self.preauth_total

    def _count_unanswered(self) -> None:
        """A new connection's packet dropped (``_Server``): log how many, now and then."""
        if unanswered := self._unanswered.add():
            logger.warning(
                "hub busy: %d packet(s) opening new connections not answered while %d"
                " connections are still to say HELLO (at most %d at a time); their agents"
                " send them again",
                unanswered,
                len(self._preauth),
                self.preauth_total,
            )

    def _count_preauth(self, connection: _AgentConnection, address: str) -> None:
        """Count a new connection among those still to say HELLO, or close it if too many."""
        if self._preauth_by_address[address] >= self.preauth_per_address:
            if refused := self._busy_refused.add():
                logger.warning(
                    "hub busy: refused %d connection(s) (from %s the last): %d connections"
                    " from that address are still to say HELLO (at most %d)",
                    refused,
                    address,
                    self._preauth_by_address[address],
                    self.preauth_per_address,
                )
            connection.refuse_when_handshaken(
                CLOSE_BUSY,
                "hub busy: too many connections from this address still to say HELLO; retry later",
            )
            return
        connection.preauth_address = address
        self._preauth.add(connection)
        self._preauth_by_address[address] += 1

    def _release_preauth(self, connection: _AgentConnection) -> None:
        """``connection`` said HELLO, or is gone: it no longer counts as a stranger."""
        address = connection.preauth_address
        if address is None:
            return
        connection.preauth_address = None
        self._preauth.discard(connection)
        self._preauth_by_address[address] -= 1
        if self._preauth_by_address[address] <= 0:
            del self._preauth_by_address[address]

    def _on_unauthenticated(
        self, connection: _AgentConnection, stream_id: int, frame: protocol.Frame
    ) -> None:
        if connection.control_stream is not None:
            return  # already refused; waiting for the close
        connection.control_stream = stream_id
        if frame.kind is not protocol.FrameKind.HELLO:
            connection.refuse("protocol", "expected HELLO first", CLOSE_PROTOCOL)
            return
        if frame.meta.get("version") != protocol.VERSION:
            connection.refuse(
                "protocol",
                f"unsupported protocol version {frame.meta.get('version')!r};"
                f" this hub speaks {protocol.VERSION}",
                CLOSE_PROTOCOL,
            )
            return
        try:
            hello = protocol.hello_from_meta(frame.meta)
        except protocol.ProtocolError as error:
            connection.refuse("protocol", str(error), CLOSE_PROTOCOL)
            return
        assert self.tokens is not None
        self.tokens.reload_if_changed()
        if not self.tokens.knows(hello.name):
            logger.warning("refused unknown agent %r from %s", hello.name, connection.address)
            connection.refuse(
                "auth",
                f"unknown agent {hello.name!r}: issue a token with "
                f"'quicflow agent-token create {hello.name}'",
                CLOSE_AUTH,
            )
            return
        if not self.tokens.verify(hello.name, hello.token):
            logger.warning(
                "refused agent %r from %s: invalid token", hello.name, connection.address
            )
            connection.refuse("auth", f"invalid token for agent {hello.name!r}", CLOSE_AUTH)
            return
        self._claim(connection, hello)

    def _claim(self, connection: _AgentConnection, hello: protocol.Hello) -> None:
        """Admit ``connection`` as ``hello.name`` unless another live agent holds the name."""
        previous = self._connections.get(hello.name)
        if (
            previous is None
            or previous.closed
            or (hello.instance and hello.instance == previous.instance)
        ):
            # Free, or the same agent process back on a new connection.
            self._admit(connection, hello)
            return
        if hello.name in self._claims:
            self._refuse_duplicate(connection, hello, "another connection is claiming it now")
            return
        self._claims[hello.name] = connection
        task = asyncio.get_running_loop().create_task(
            self._settle_claim(previous, connection, hello), name=f"claim {hello.name}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_claim(
        self, previous: _AgentConnection, connection: _AgentConnection, hello: protocol.Hello
    ) -> None:
        try:
            try:
                await asyncio.wait_for(previous.ping(), self.claim_timeout)
                alive = not previous.closed
            except (TimeoutError, ConnectionError):
                alive = False
        finally:
            self._claims.pop(hello.name, None)
        if connection.closed or connection.name is not None:
            return
        if alive and self._connections.get(hello.name) is previous:
            info = self.registry.get(hello.name)
            where = f"host {info.hostname!r}, " if info is not None and info.hostname else ""
            self._refuse_duplicate(
                connection, hello, f"the agent connected from {where}{previous.address} answers"
            )
            return
        if self._connections.get(hello.name) is previous:
            logger.warning(
                "agent %r: the connection from %s did not answer; the new one from %s takes over",
                hello.name,
                previous.address,
                connection.address,
            )
        self._admit(connection, hello)

    def _refuse_duplicate(
        self, connection: _AgentConnection, hello: protocol.Hello, why: str
    ) -> None:
        logger.warning(
            "refused a second agent named %r from %s: %s", hello.name, connection.address, why
        )
        connection.refuse(
            "duplicate",
            f"agent name {hello.name!r} is already in use ({why}); two agents cannot share a "
            "name: give this one its own --name and token (quicflow agent-token create NAME)",
            CLOSE_DUPLICATE,
        )

    def _admit(self, connection: _AgentConnection, hello: protocol.Hello) -> None:
        previous = self._connections.get(hello.name)
        if previous is not None and previous is not connection:
            # The same agent back after a network cut the hub has not noticed yet, or an
            # old connection that did not answer the claim probe.
            self._on_terminated(previous)
            previous.name = None
            previous.refuse(
                "replaced", "replaced by a newer connection of the same agent", CLOSE_REPLACED
            )
        connection.name = hello.name
        connection.instance = hello.instance
        connection.token = hello.token
        connection.heartbeat = hello.heartbeat
        connection.answer_heartbeats = hello.answer_heartbeats
        connection.welcomed()
        self._release_preauth(connection)
        self._connections[hello.name] = connection
        now = time.time()
        self.registry.add(
            registry.AgentInfo(
                name=hello.name,
                labels=dict(hello.labels),
                hostname=hello.hostname,
                os=hello.os,
                agent_version=hello.agent_version,
                connected_since=now,
                last_heartbeat=now,
                address=connection.address,
                heartbeat_interval=hello.heartbeat,
            )
        )
        assert connection.control_stream is not None
        connection.send(
            connection.control_stream,
            protocol.encode(
                protocol.FrameKind.WELCOME,
                {"hub_version": agent.__version__, "heartbeat": self.heartbeat_interval},
            ),
        )
        logger.info("agent %r connected from %s", hello.name, connection.address)
        for pending in list(self._pending.values()):
            if pending.agent == hello.name and not pending.future.done():
                self._send_command(connection, pending, attach_only=True)
        self._notify()

    def _on_control(self, connection: _AgentConnection, frame: protocol.Frame) -> None:
        assert connection.name is not None and connection.control_stream is not None
        if frame.kind is protocol.FrameKind.HEARTBEAT:
            self.registry.touch(connection.name, time.time())
            if connection.answer_heartbeats:
                connection.send(
                    connection.control_stream,
                    protocol.encode(protocol.FrameKind.HEARTBEAT, {"time": time.time()}),
                )
            else:
                connection.acknowledge_now()  # the ACK is the answer
        elif frame.kind is protocol.FrameKind.STATUS:
            try:
                self.registry.set_status(connection.name, protocol.status_from_meta(frame.meta))
            except protocol.ProtocolError as error:
                logger.warning("agent %r sent a bad status report: %s", connection.name, error)

    def _on_output(self, pending: _Pending, frame: protocol.Frame) -> None:
        seq = int(frame.meta.get("seq", -1))
        if seq < pending.next_seq:
            return  # replayed after a reconnect: already delivered
        if seq > pending.next_seq:
            logger.warning(
                "command %r on %r: output chunks %d..%d lost",
                pending.request.command_id,
                pending.agent,
                pending.next_seq,
                seq - 1,
            )
        pending.next_seq = seq + 1
        if pending.on_output is not None:
            try:
                pending.on_output(str(frame.meta.get("stream", "stdout")), frame.data)
            except Exception:  # noqa: BLE001 - a broken consumer must not break the connection
                logger.exception(
                    "output callback failed for command %r", pending.request.command_id
                )

    def _on_exit(
        self,
        connection: _AgentConnection,
        stream_id: int,
        pending: _Pending | None,
        frame: protocol.Frame,
    ) -> None:
        seq = -1 if pending is None else pending.next_seq - 1
        connection.send(
            stream_id,
            protocol.encode(protocol.FrameKind.ACK, {"seq": seq, "exit": True}),
            end_stream=True,
        )
        connection.commands.pop(stream_id, None)
        if pending is None:
            return
        try:
            result = protocol.result_from_meta(frame.meta)
        except protocol.ProtocolError as error:
            result = ExecResult(pending.request.command_id, None, error=str(error))
        key = (pending.agent, pending.request.command_id)
        if self._pending.get(key) is pending:
            del self._pending[key]
        if not pending.future.done():
            pending.future.set_result(result)

    def _on_terminated(self, connection: _AgentConnection) -> None:
        name = connection.name
        if name is None or self._connections.get(name) is not connection:
            return
        del self._connections[name]
        self.registry.remove(name)
        now = time.monotonic()
        for pending in connection.commands.values():
            if not pending.future.done():
                pending.disconnected_at = now
        connection.commands.clear()
        logger.info("agent %r disconnected", name)
        self._notify()

    # --- housekeeping -------------------------------------------------------------------

    async def _watch(self) -> None:
        tick = max(0.05, min(1.0, self.heartbeat_interval / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self._check_heartbeats()
                assert self.tokens is not None
                if self.tokens.reload_if_changed():
                    self._enforce_tokens()
                self._expire_pending()
                await self._write_snapshot()
            except Exception:  # noqa: BLE001 - the watchdog must survive a bad token file
                logger.exception("hub watchdog failed")

    async def _write_snapshot(self) -> None:
        now = time.time()
        interval = snapshots.interval_for(self.heartbeat_interval)
        if not self._snapshot_due and now - self._snapshot_written < interval:
            return
        self._snapshot_due = False
        self._snapshot_written = now
        await asyncio.to_thread(snapshots.write, self.data_dir, self._snapshot(now))

    def _snapshot(self, now: float, running: bool = True) -> dict[str, Any]:
        return snapshots.render(
            self.registry.all(),
            written=now,
            address=f"{self.host}:{self.port}",
            interval=snapshots.interval_for(self.heartbeat_interval),
            running=running,
        )

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for name, connection in list(self._connections.items()):
            if now - connection.last_heard > 3 * connection.heartbeat:
                logger.warning("agent %r lost: missed 3 heartbeats", name)
                connection.close_with(CLOSE_LOST, "missed 3 heartbeats")
                # Do not wait for the close to go through: the agent is gone now.
                self._on_terminated(connection)

    def _enforce_tokens(self) -> None:
        assert self.tokens is not None
        for name, connection in list(self._connections.items()):
            if not self.tokens.verify(name, connection.token):
                running = [p for p in connection.commands.values() if not p.future.done()]
                logger.warning(
                    "agent %r disconnected: token revoked (%d running command(s) cancelled)",
                    name,
                    len(running),
                )
                assert connection.control_stream is not None
                for pending in running:
                    # A revoked agent is no longer trusted to finish what it was given.
                    connection.send(
                        connection.control_stream,
                        protocol.encode(
                            protocol.FrameKind.CANCEL, {"command_id": pending.request.command_id}
                        ),
                    )
                    self._pending.pop((name, pending.request.command_id), None)
                    pending.future.set_exception(
                        errors.TemporaryError(
                            f"token of agent {name!r} was revoked while it ran"
                            f" {pending.request.command_id!r}; the agent was told to cancel it"
                        )
                    )
                connection.refuse("revoked", f"token of agent {name!r} was revoked", CLOSE_REVOKED)
                self._on_terminated(connection)
                connection.name = None

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for key, pending in list(self._pending.items()):
            if pending.future.done():
                del self._pending[key]
            elif (
                pending.agent not in self._connections
                and pending.disconnected_at is not None
                and now - pending.disconnected_at > self.reconnect_grace
            ):
                del self._pending[key]
                # Kept so that ``collect`` can ask the agent for it when it is back.
                self._lost.pop(key, None)
                self._lost[key] = pending.request
                while len(self._lost) > LOST_KEPT:
                    del self._lost[next(iter(self._lost))]
                pending.future.set_exception(
                    errors.AgentLost(
                        f"agent {pending.agent!r} lost while running {pending.request.command_id!r}"
                        f" (not back within {self.reconnect_grace:g} s); its fate is unknown",
                        pending.agent,
                        pending.request.command_id,
                    )
                )

    def _notify(self) -> None:
        self._snapshot_due = True
        self._changed.set()
        self._changed = asyncio.Event()
