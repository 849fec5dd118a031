"""The agent's QUIC connections to its hubs (the only agent module that imports aioquic).

``AgentClient.run`` connects to every hub it is given -- one per reconciler replica -- and
keeps one connection per hub, each with its own reconnect loop (``HubLink``), all serving
one ``executing.Executor``.  Per hub it verifies the hub (CA file, or a pinned SHA-256
fingerprint of its certificate -- never no verification), says HELLO with its token, then
heartbeats, reports status and serves the command streams the hub opens.  When a
connection ends that hub's loop reconnects forever with exponential backoff and jitter
capped at 60 s; commands keep running meanwhile and are re-attached by the hub after the
reconnect.  A hub that is down delays nothing the others send.

One executor for every hub: command ids are stable per run, step and attempt, so a
command a replica re-issues after it took over from another is adopted while it runs, or
answered from the result journal, never run twice.  A command's output and result go to
every hub attached to it (the one that started it and the one that adopted it); the
latest to attach paces the output with its ACKs, and a hub cannot cancel a command
another connected hub also waits for.

A refusal that retrying cannot cure (unknown agent, wrong or revoked token, a second agent
with this name) is logged once with the hub's reason and retried only every
``refused_retry`` s -- or at once when the token file changes, which is re-read before
every connection.  ``request_shutdown`` (wired to SIGTERM) lets running commands finish
(or cancels them after a grace period), delivers their results, then closes.

Log lines an operator greps for, each naming the hub's address: ``connected to hub``,
``hub … refused``, ``connection to hub … lost``, ``cannot reach hub``, ``reconnecting in``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import platform
import random
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

import agent
from agent import executing, protocol, sending, status
from agent.sending import CoalescedSending

logger = logging.getLogger("agent")

# QUIC application error codes used when the agent closes a connection.
CLOSE_NORMAL = 0
CLOSE_PIN_MISMATCH = 0x101
CLOSE_HUB_SILENT = 0x102
CLOSE_PROTOCOL = 0x103
# Each heartbeat leaves up to this fraction of the interval early (uniformly at random).
HEARTBEAT_JITTER = 0.2


class HubRefused(Exception):
    """The hub said no (bad token, unknown agent, ...); the reason is the message."""

    def __init__(self, reason: str, code: str = "") -> None:
        super().__init__(reason)
        self.code = code

    @property
    def permanent(self) -> bool:
        """True when retrying with the same token and name cannot succeed."""
        return self.code in protocol.PERMANENT_REFUSALS or self.code == "duplicate"


class HubUntrusted(Exception):
    """The hub's certificate does not match the pinned fingerprint."""


class TokenUnreadable(Exception):
    """The token file is missing, unreadable or empty."""


@dataclass(frozen=True, slots=True)
class HubAddress:
    """One hub to connect to, and the fingerprint its certificate must have (None: the CA)."""

    host: str
    port: int
    pin_sha256: str | None = None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the agent needs to know to connect and run."""

    # The first hub (with ``pin_sha256``); ``more_hubs`` are the others, one per replica.
    host: str
    port: int
    name: str
    token: str
    work_dir: Path
    # When set, the token is read from this file before every connection (and ``token``
    # is ignored), so a rotated token is picked up without a restart.
    token_file: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ca_file: Path | None = None
    pin_sha256: str | None = None
    heartbeat: float = 15.0
    watch: tuple[str, ...] = ()
    status_interval: float = 30.0
    backoff_initial: float = 0.5
    backoff_cap: float = 60.0
    shutdown_grace: float = 30.0
    refused_retry: float = 300.0
    deploy_types: frozenset[str] | None = None
    pass_env: tuple[str, ...] | None = None
    more_hubs: tuple[HubAddress, ...] = ()

    def hubs(self) -> tuple[HubAddress, ...]:
        """Every hub this agent serves: the first (``host``, ``port``), then ``more_hubs``."""
        return (HubAddress(self.host, self.port, self.pin_sha256), *self.more_hubs)


def backoff_delays(initial: float, cap: float, rng: random.Random) -> Iterator[float]:
    """Delays before each reconnect: doubling from ``initial`` up to ``cap``, each jittered.

    Half of each delay is fixed and half random ("equal jitter"), so a fleet that lost the
    hub at once spreads its reconnects out but no agent retries in a tight loop.
    """
    attempt = 0
    while True:
        ceiling = min(cap, initial * (2**attempt))
        yield ceiling / 2 + rng.uniform(0, ceiling / 2)
        attempt = min(attempt + 1, 32)


def read_token(path: Path) -> str:
    """The token in the file ``path`` (surrounding whitespace removed)."""
    try:
        token = path.read_text().strip()
    except OSError as failure:
        raise TokenUnreadable(
            f"cannot read the token file {path}: {failure.strerror or failure}"
        ) from None
    if not token:
        raise TokenUnreadable(f"the token file {path} is empty")
    return token


def normalize_fingerprint(value: str) -> str:
    """Upper-case hex without separators, so ``ab:cd`` and ``ABCD`` compare equal."""
    return value.replace(":", "").replace(" ", "").strip().upper()


@contextlib.asynccontextmanager
async def _open_connection(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    create: Callable[..., QuicConnectionProtocol],
) -> AsyncIterator[QuicConnectionProtocol]:
    """Like ``aioquic.asyncio.connect``, but without waiting out the closing period.

    aioquic's own ``connect`` waits for the close handshake on exit; when the hub is gone
    that takes several seconds of retransmitted CONNECTION_CLOSE, delaying the reconnect.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, address = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        # Connected, so the kernel reports an ICMP "port unreachable" (a hub that is down
        # or restarting) as an error at once instead of the attempt timing out after 10 s.
        sock.connect(address)
        sock.setblocking(False)
        transport, connection = await loop.create_datagram_endpoint(
            lambda: create(QuicConnection(configuration=configuration)), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    assert isinstance(connection, _HubConnection)
    handshake: asyncio.Future[None] | None = None
    try:
        connection.connect(address)
        handshake = asyncio.ensure_future(connection.wait_connected())
        await asyncio.wait({handshake, connection.unreachable}, return_when=asyncio.FIRST_COMPLETED)
        if not handshake.done():
            handshake.cancel()
            raise ConnectionRefusedError(f"nothing answers at {host}:{port} (port unreachable)")
        handshake.result()
        yield connection
    finally:
        # aioquic fails its own handshake waiter when the connection ends; once we stopped
        # waiting (timeout, refusal) nobody would retrieve that error and asyncio would
        # print "Future exception was never retrieved" for every failed attempt.
        waiter = getattr(connection, "_connected_waiter", None)
        for pending in (waiter, handshake):
            if isinstance(pending, asyncio.Future):
                pending.add_done_callback(_retrieve)
        if handshake is not None and not handshake.done():
            handshake.cancel()  # given up on (the caller's timeout): it must not linger
        connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.wait_closed(), 0.2)
        transport.close()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _HubConnection(CoalescedSending, QuicConnectionProtocol):
    """One QUIC connection to a hub: decodes frames per stream and hands them to its link.

    It also holds what one connection's session knows: its control stream, the answer to
    HELLO, when the hub was last heard, and which command each of its streams carries.
    """

    # A command's EXIT usually follows its EXEC within a few ms: it carries the ACK then.
    ack_delay = sending.MAX_ACK_DELAY

    def __init__(self, *args: Any, link: HubLink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link
        self.closed = False
        # Set when the session is over: nothing more is sent on this connection.
        self.detached = False
        self.control_stream: int | None = None
        self.welcome: asyncio.Future[protocol.Frame] | None = None
        self.last_heard = time.monotonic()
        self.close_reason = ""
        self.streams: dict[int, str] = {}
        self._decoders: dict[int, protocol.FrameDecoder] = {}
        # Done when the kernel says nothing listens at the hub's address (ICMP).
        self.unreachable: asyncio.Future[OSError] = self._loop.create_future()

    def error_received(self, exc: OSError) -> None:
        """The hub's port is unreachable: fail a handshake at once, close a session soon."""
        if self.unreachable.done():
            return
        self.unreachable.set_result(exc)
        if self.welcome is not None and not self.closed:
            # The hub process is gone (SIGKILL, crash) without saying so: reconnect now
            # rather than after three missed heartbeats.
            self.close_reason = f"hub unreachable ({exc.strerror or exc})"
            self.close(CLOSE_HUB_SILENT, "hub unreachable")

    @property
    def live(self) -> bool:
        """True while frames sent here can still reach the hub."""
        return not self.closed and not self.detached

    def peer_certificate_der(self) -> bytes | None:
        """DER bytes of the certificate the hub presented in the handshake."""
        # aioquic has no public accessor; fail closed if this private attribute ever moves.
        certificate = getattr(self._quic.tls, "_peer_certificate", None)
        if certificate is None:
            return None
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        return certificate.public_bytes(serialization.Encoding.DER)

    def new_stream_id(self) -> int:
        """A fresh client-initiated bidirectional stream id."""
        return self._quic.get_next_available_stream_id()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        """Decode stream data into frames; report the end of the connection."""
        if isinstance(event, events.StreamDataReceived):
            decoder = self._decoders.setdefault(event.stream_id, protocol.FrameDecoder())
            try:
                frames = decoder.feed(event.data)
            except protocol.ProtocolError as error:
                logger.error("hub %s sent a bad frame: %s", self.link.address, error)
                self.close(CLOSE_PROTOCOL, str(error))
                return
            for frame in frames:
                self.link._on_frame(self, event.stream_id, frame)
            if event.end_stream:
                self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.StreamReset):
            self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = True
            self.link._on_terminated(self, event)


class _Delivery:
    """Where one command's frames go: the stream of every hub connection attached to it.

    The executor sees one ``send``; after a takeover two hubs may wait for the command (the
    replica that started it, if it is still there, and the one that adopted it), and both
    get its output and result.  While a hub attaches, the replay of what it missed goes to
    it alone (``only``): the others have it already.
    """

    __slots__ = ("only", "streams")

    def __init__(self) -> None:
        # In the order they attached: the last live one is the primary.
        self.streams: dict[_HubConnection, int] = {}
        self.only: tuple[_HubConnection, int] | None = None

    def __call__(self, data: bytes, end_stream: bool) -> None:
        targets = [self.only] if self.only is not None else list(self.streams.items())
        for connection, stream_id in targets:
            if connection.live:
                connection.send(stream_id, data, end_stream)

    def attach(self, connection: _HubConnection, stream_id: int) -> None:
        """Send to ``stream_id`` of ``connection`` too, and make it the primary."""
        self.streams.pop(connection, None)
        self.streams[connection] = stream_id

    def detach(self, connection: _HubConnection) -> None:
        """Stop sending to ``connection``."""
        self.streams.pop(connection, None)

    def primary(self) -> _HubConnection | None:
        """The live connection that attached last: its ACKs pace the command's output."""
        for connection in reversed(self.streams):
            if connection.live:
                return connection
        return None

    def others(self, connection: _HubConnection) -> list[_HubConnection]:
        """Live connections attached besides ``connection``."""
        return [other for other in self.streams if other is not connection and other.live]


class HubLink:
    """One hub of an agent: its connection, forever re-established, and its frames."""

    def __init__(self, client: AgentClient, address: HubAddress) -> None:
        self.client = client
        self.address = address
        self.connected = asyncio.Event()
        self.connection: _HubConnection | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, finisher: asyncio.Future[None]) -> None:
        """Connect and serve until ``finisher`` is done; reconnect with backoff after a loss."""
        settings = self.client.settings
        rng = self.client.rng
        delays = backoff_delays(settings.backoff_initial, settings.backoff_cap, rng)
        # During a shutdown the link keeps (re)connecting until the running commands have
        # finished, so that their results can still be delivered.
        while not finisher.done():
            welcomed = False
            refusal: HubRefused | None = None
            try:
                # A revocation while connected is followed by one prompt retry (the token
                # file may hold a new token); its refusal then counts.
                welcomed = await self._attempt(finisher)
            except HubRefused as refused:
                refusal = refused
            except HubUntrusted as distrust:
                logger.error("not connecting to hub %s: %s", self.address, distrust)
            except TokenUnreadable as unreadable:
                refusal = HubRefused(str(unreadable), "auth")
            except (OSError, ConnectionError, TimeoutError) as failure:
                logger.warning(
                    "cannot reach hub %s: %s", self.address, str(failure) or type(failure).__name__
                )
            if finisher.done():
                break
            if welcomed:
                delays = backoff_delays(settings.backoff_initial, settings.backoff_cap, rng)
            if refusal is not None and refusal.permanent:
                await self._wait_after_refusal(refusal, finisher)
                continue
            if refusal is not None:
                # Busy is the hub pacing a crowd (many agents behind one address), not a fault.
                log = logger.warning if refusal.code == "busy" else logger.error
                log("hub %s refused agent %r: %s", self.address, settings.name, refusal)
            delay = next(delays)
            logger.info("hub %s: reconnecting in %.1f s", self.address, delay)
            await asyncio.wait({finisher}, timeout=delay)

    async def _attempt(self, finisher: asyncio.Future[None]) -> bool:
        """One session; given up if the agent shuts down before this hub welcomed it."""
        session = asyncio.ensure_future(self._session(finisher))
        either: set[asyncio.Future[Any]] = {session, finisher}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            session.cancel()
            raise
        if not session.done() and not self.connected.is_set():
            # A hub still being reached (perhaps down) must not hold up the agent's exit.
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
            return False
        return await session

    async def _wait_after_refusal(
        self, refusal: HubRefused, finisher: asyncio.Future[None]
    ) -> None:
        """Wait ``refused_retry`` s, or until the token file changes, or shutdown."""
        settings = self.client.settings
        cure = " or as soon as the token file changes" if settings.token_file else ""
        logger.error(
            "hub %s refused agent %r (%s): %s; retrying in %.0f s%s",
            self.address,
            settings.name,
            refusal.code or "refused",
            refusal,
            settings.refused_retry,
            cure,
        )
        signature = self.client._token_file_signature()
        deadline = time.monotonic() + settings.refused_retry
        while not finisher.done() and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait({finisher}, timeout=min(remaining, 1.0))
            if settings.token_file is not None and self.client._token_file_signature() != signature:
                logger.info(
                    "token file %s changed: reconnecting now (hub %s)",
                    settings.token_file,
                    self.address,
                )
                return

    def close(self) -> None:
        """Close the connection to this hub, if there is one (the agent is shutting down)."""
        connection = self.connection
        if connection is not None and not connection.closed:
            connection.close(CLOSE_NORMAL, "agent shutting down")

    # --- one connection -----------------------------------------------------------------

    def _configuration(self) -> QuicConfiguration:
        settings = self.client.settings
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[protocol.ALPN],
            # Heartbeats keep the connection alive; this is only the backstop.
            idle_timeout=max(3 * settings.heartbeat + 2.0, 5.0),
            max_data=8 << 20,
            max_stream_data=4 << 20,
            server_name=self.address.host,
        )
        if settings.ca_file is not None:
            configuration.verify_mode = ssl.CERT_REQUIRED
            configuration.load_verify_locations(cafile=str(settings.ca_file))
        elif self.address.pin_sha256:
            # Chain and name checks are replaced by the pin check in _verify_pin, made right
            # after the handshake and before a byte (the token) is sent.  aioquic still
            # verifies the CertificateVerify signature, so the hub holds the pinned key.
            configuration.verify_mode = ssl.CERT_NONE
        else:
            configuration.verify_mode = ssl.CERT_REQUIRED  # system (certifi) roots
        return configuration

    async def _session(self, finisher: asyncio.Future[None]) -> bool:
        """One connection from handshake to loss; True if the hub welcomed us."""
        client, settings = self.client, self.client.settings
        token = client._token()
        loop = asyncio.get_running_loop()
        create = functools.partial(_HubConnection, link=self)
        async with contextlib.AsyncExitStack() as stack:
            connection = await asyncio.wait_for(
                stack.enter_async_context(
                    _open_connection(
                        self.address.host, self.address.port, self._configuration(), create
                    )
                ),
                timeout=10.0,
            )
            assert isinstance(connection, _HubConnection)
            self._verify_pin(connection)
            self.connection = connection
            connection.control_stream = connection.new_stream_id()
            connection.welcome = welcome = loop.create_future()
            # Failed by the hub's close after we stopped waiting (timeout): not an error
            # anyone is left to retrieve.
            welcome.add_done_callback(_retrieve)
            connection.last_heard = time.monotonic()
            hello = protocol.Hello(
                name=settings.name,
                token=token,
                labels=settings.labels,
                hostname=socket.gethostname(),
                os=f"{platform.system()} {platform.release()}",
                agent_version=agent.__version__,
                heartbeat=settings.heartbeat,
                instance=client.instance,
                # The QUIC ACK of each heartbeat says the hub is there (``sending``).
                answer_heartbeats=False,
            )
            try:
                connection.send(
                    connection.control_stream,
                    protocol.encode(protocol.FrameKind.HELLO, protocol.hello_to_meta(hello)),
                )
                try:
                    frame = await asyncio.wait_for(asyncio.shield(welcome), timeout=10.0)
                except TimeoutError:
                    raise TimeoutError("no answer to HELLO within 10 s") from None
                if frame.kind is protocol.FrameKind.ERROR:
                    raise HubRefused(
                        str(frame.meta.get("reason") or "no reason given"),
                        str(frame.meta.get("code") or ""),
                    )
                der = connection.peer_certificate_der()
                logger.info(
                    "connected to hub %s as %r (hub %s, certificate SHA-256 %s, heartbeat %g s)",
                    self.address,
                    settings.name,
                    frame.meta.get("hub_version") or "?",
                    hashlib.sha256(der).hexdigest().upper() if der else "?",
                    settings.heartbeat,
                )
                self.connected.set()
                client.connected.set()
                await self._serve(connection, finisher)
            finally:
                self.connected.clear()
                if not any(link.connected.is_set() for link in client.links):
                    client.connected.clear()
                client._detach(connection)
                self.connection = None
            return True
        return False  # pragma: no cover - the context manager does not swallow errors

    def _verify_pin(self, connection: _HubConnection) -> None:
        pin = self.address.pin_sha256
        if not pin or self.client.settings.ca_file is not None:
            return
        der = connection.peer_certificate_der()
        actual = hashlib.sha256(der).hexdigest().upper() if der is not None else "<none>"
        if actual != normalize_fingerprint(pin):
            connection.close(
                CLOSE_PIN_MISMATCH, "hub certificate does not match pinned fingerprint"
            )
            raise HubUntrusted(
                f"hub certificate fingerprint {actual} does not match the pinned "
                f"{normalize_fingerprint(pin)}"
            )

    async def _serve(self, connection: _HubConnection, finisher: asyncio.Future[None]) -> None:
        client = self.client
        interval = client.settings.heartbeat
        status_every = client.settings.status_interval
        last_report: protocol.StatusReport | None = None
        next_status = 0.0
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            while not closed.done():
                now = time.monotonic()
                if now - connection.last_heard > 3 * interval:
                    logger.warning(
                        "hub %s silent for %.1f s: reconnecting",
                        self.address,
                        now - connection.last_heard,
                    )
                    connection.close(CLOSE_HUB_SILENT, "hub missed 3 heartbeats")
                    break
                assert connection.control_stream is not None
                connection.send(
                    connection.control_stream,
                    protocol.encode(protocol.FrameKind.HEARTBEAT, {"time": time.time()}),
                )
                if client.collector.has_sources():
                    report = await client.status_report()
                    if now >= next_status or status.changed(last_report, report):
                        connection.send(
                            connection.control_stream,
                            protocol.encode(
                                protocol.FrameKind.STATUS, protocol.status_to_meta(report)
                            ),
                        )
                        last_report, next_status = report, now + status_every
                # A little early, by a random amount each time: a fleet that (re)connected
                # within a second -- after a hub restart -- spreads its heartbeats out
                # again instead of beating in step for as long as it stays connected.
                early = client.rng.uniform(0.0, HEARTBEAT_JITTER)
                await asyncio.wait({closed, finisher}, timeout=interval * (1 - early))
                if finisher.done():
                    # Shut down while this connection was being set up: close it now.
                    connection.close(CLOSE_NORMAL, "agent shutting down")
                    break
        finally:
            closed.cancel()
        if not client._shutdown.is_set():
            logger.warning(
                "connection to hub %s lost: %s", self.address, connection.close_reason or "closed"
            )

    # --- frames from the hub ------------------------------------------------------------

    def _on_frame(self, connection: _HubConnection, stream_id: int, frame: protocol.Frame) -> None:
        kind = protocol.FrameKind
        if stream_id == connection.control_stream:
            welcome = connection.welcome
            if frame.kind in (kind.WELCOME, kind.ERROR) and welcome and not welcome.done():
                welcome.set_result(frame)
            elif frame.kind is kind.ERROR:
                connection.close_reason = str(frame.meta.get("reason"))
                logger.error("hub %s: %s", self.address, connection.close_reason)
            elif frame.kind is kind.CANCEL:
                self.client._cancel(connection, str(frame.meta.get("command_id")))
            return
        if frame.kind in (kind.EXEC, kind.GIT_PULL):
            try:
                request = protocol.request_from_frame(frame)
            except protocol.ProtocolError as error:
                meta = {
                    "command_id": str(frame.meta.get("command_id", "")),
                    "exit_code": None,
                    "error": str(error),
                }
                connection.send(stream_id, protocol.encode(kind.EXIT, meta), True)
                return
            self.client._submit(connection, stream_id, request, frame.meta)
        elif frame.kind is kind.ACK:
            self.client._acknowledge(connection, stream_id, frame.meta)

    def _on_terminated(
        self, connection: _HubConnection, event: events.ConnectionTerminated
    ) -> None:
        if event.reason_phrase and not connection.close_reason:
            connection.close_reason = event.reason_phrase
        welcome = connection.welcome
        if welcome is not None and not welcome.done():
            reason = event.reason_phrase or "connection closed before the hub answered"
            busy = event.error_code == protocol.CLOSE_BUSY
            welcome.set_exception(
                HubRefused(reason, "busy" if busy else "")
                if event.reason_phrase
                else ConnectionError(reason)
            )


class AgentClient:
    """Serves every hub it is given, forever: one ``HubLink`` per hub, one executor for all."""

    def __init__(
        self,
        settings: AgentSettings,
        executor: executing.Executor | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.executor = executor or executing.Executor(
            settings.work_dir, deploy_types=settings.deploy_types, pass_env=settings.pass_env
        )
        # Tells a hub that a new connection is this same process (not a second agent).
        self.instance = secrets.token_hex(8)
        self.collector = status.StatusCollector(settings.watch)
        self.rng = rng or random.Random()
        self.links = [HubLink(self, address) for address in settings.hubs()]
        # Set while at least one hub is connected.
        self.connected = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._finisher: asyncio.Future[None] | None = None
        self._deliveries: dict[str, _Delivery] = {}
        self._sampling = asyncio.Lock()
        self._sample: tuple[float, protocol.StatusReport] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve every hub until shut down; each reconnects with backoff after a loss."""
        settings = self.settings
        types = settings.deploy_types
        logger.info(
            "quicflow agent %s starting as %r: %s, work root %s, deploy types %s%s",
            agent.__version__,
            settings.name,
            ", ".join(f"hub {link.address} ({self._trust(link.address)})" for link in self.links),
            self.executor.work_dir,
            "all" if types is None else (",".join(sorted(types)) or "none"),
            "".join(f", label {k}={v}" for k, v in sorted(settings.labels.items())),
        )
        # Before any hub hears from us: what an earlier agent process left running is
        # killed, so a hub's re-attach learns that its step is dead (``Executor.recover``).
        await self.executor.recover()
        finisher = self._finisher = asyncio.ensure_future(self._finish_on_shutdown())
        try:
            async with asyncio.TaskGroup() as group:
                for link in self.links:
                    group.create_task(link.run(finisher), name=f"hub {link.address}")
        finally:
            if not finisher.done():
                finisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finisher
            # Results stay on disk: a restarted agent still answers the hub's re-attach.
            await self.executor.shutdown(0)
            self.executor.close()

    def _trust(self, address: HubAddress) -> str:
        if self.settings.ca_file is not None:
            return f"trusting the CA file {self.settings.ca_file}"
        if address.pin_sha256:
            return f"pinning certificate SHA-256 {normalize_fingerprint(address.pin_sha256)}"
        return "trusting the system CA roots"

    def _token(self) -> str:
        """The token to say HELLO with: the token file's content when there is one."""
        path = self.settings.token_file
        return self.settings.token if path is None else read_token(path)

    def _token_file_signature(self) -> tuple[int, int, int] | None:
        path = self.settings.token_file
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def request_shutdown(self) -> None:
        """Begin a clean shutdown (SIGTERM): finish or cancel commands, report, close."""
        if not self._shutdown.is_set():
            logger.info("shutting down: letting running commands finish")
        self._shutdown.set()

    async def _finish_on_shutdown(self) -> None:
        await self._shutdown.wait()
        await self.executor.shutdown(self.settings.shutdown_grace)
        # Give the hubs a moment to acknowledge the last results before closing under them;
        # a result owed to a hub that is down stays in the journal for its re-attach.
        deadline = time.monotonic() + 2.0
        while self._deliverable() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for link in self.links:
            link.close()

    def _deliverable(self) -> bool:
        """True while output or a result not yet acknowledged has a connected hub to go to."""
        for execution in self.executor.undelivered():
            delivery = self._deliveries.get(execution.command_id)
            if delivery is not None and delivery.primary() is not None:
                return True
        return False

    async def status_report(self) -> protocol.StatusReport:
        """A sample of the host's status, shared by the connections to all hubs."""
        # Every connection asks once per heartbeat; a sample younger than half a heartbeat
        # serves the others, and the lock keeps the collector in one thread at a time.
        async with self._sampling:
            now = time.monotonic()
            if self._sample is None or now - self._sample[0] >= self.settings.heartbeat / 2:
                self._sample = (now, await asyncio.to_thread(self.collector.collect))
            return self._sample[1]

    # --- commands, from any hub ---------------------------------------------------------

    def _submit(
        self,
        connection: _HubConnection,
        stream_id: int,
        request: protocol.Request,
        meta: Mapping[str, Any],
    ) -> None:
        """Run a command a hub sent, or attach that hub to it if it runs or ran here."""
        command_id = request.command_id
        delivery = self._deliveries.get(command_id) or _Delivery()
        cancel = bool(meta.get("cancel"))
        if cancel and delivery.others(connection):
            logger.warning(
                "hub %s asked to cancel command %s, which another hub also waits for:"
                " not cancelled",
                connection.link.address,
                command_id,
            )
            cancel = False
        delivery.only = (connection, stream_id)
        try:
            execution = self.executor.submit(
                request,
                delivery,
                resume_seq=int(meta.get("resume_seq") or 0),
                attach_only=bool(meta.get("attach_only")),
                cancel=cancel,
            )
        except Exception as failure:  # noqa: BLE001 - e.g. a full disk; tell the hub
            logger.exception("cannot start command %s", command_id)
            result = protocol.ExecResult(command_id, None, error=f"agent: {failure}")
            delivery(
                protocol.encode(protocol.FrameKind.EXIT, protocol.result_to_meta(result)), True
            )
            return
        finally:
            delivery.only = None
        if execution is None:
            return  # answered at once: a stored result or a refusal
        if execution.request is not request and not meta.get("attach_only"):
            # The executor kept the execution an earlier EXEC started (from another hub, or
            # from this one before a reconnect): this hub now follows that one.
            logger.info(
                "command %s from hub %s is %s here: attached to it, not run again",
                command_id,
                connection.link.address,
                "finished" if execution.done else "running",
            )
        delivery.attach(connection, stream_id)
        self._deliveries[command_id] = delivery
        connection.streams[stream_id] = command_id

    def _acknowledge(
        self, connection: _HubConnection, stream_id: int, meta: Mapping[str, Any]
    ) -> None:
        """Apply a hub's ACK; only the primary hub's ACKs free the command's output window."""
        command_id = connection.streams.get(stream_id)
        if command_id is None:
            return
        exit_received = bool(meta.get("exit"))
        if exit_received:
            connection.streams.pop(stream_id, None)
        delivery = self._deliveries.get(command_id)
        if delivery is None or delivery.primary() is not connection:
            if exit_received and delivery is not None:
                delivery.detach(connection)
            return
        seq = meta.get("seq")
        self.executor.acknowledge(command_id, None if seq is None else int(seq), exit_received)
        if exit_received:
            del self._deliveries[command_id]

    def _cancel(self, connection: _HubConnection, command_id: str) -> None:
        """Cancel a command, unless another connected hub also waits for it."""
        delivery = self._deliveries.get(command_id)
        others = delivery.others(connection) if delivery is not None else []
        if others:
            # A replica that lost the environment must not stop the step its successor
            # adopted.
            logger.warning(
                "hub %s asked to cancel command %s, which hub %s also waits for: not cancelled",
                connection.link.address,
                command_id,
                ", ".join(str(other.link.address) for other in others),
            )
            return
        self.executor.cancel(command_id)

    def _detach(self, connection: _HubConnection) -> None:
        """A connection ended: its commands keep running, their frames stop going there."""
        connection.detached = True
        for command_id in connection.streams.values():
            delivery = self._deliveries.get(command_id)
            if delivery is not None:
                delivery.detach(connection)
                if not delivery.streams:
                    del self._deliveries[command_id]
        connection.streams.clear()
