"""The agent's QUIC connection to the hub (the only agent module that imports aioquic).

``AgentClient.run`` connects, verifies the hub (CA file, or a pinned SHA-256 fingerprint
of its certificate -- never no verification), says HELLO with its token, then heartbeats,
reports status and serves the command streams the hub opens.  When the connection ends it
reconnects forever with exponential backoff and jitter capped at 60 s; commands keep
running meanwhile and are re-attached by the hub after the reconnect.  A refusal that
retrying cannot cure (unknown agent, wrong or revoked token, a second agent with this
name) is logged once with the hub's reason and retried only every ``refused_retry`` s --
or at once when the token file changes, which is re-read before every connection.
``request_shutdown`` (wired to SIGTERM) lets running commands finish (or cancels them
after a grace period), delivers their results, then closes.

Log lines an operator greps for: ``connected to hub``, ``hub refused``, ``connection to
hub lost``, ``cannot reach hub``, ``reconnecting in``.
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
class AgentSettings:
    """Everything the agent needs to know to connect and run."""

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
        sock.setblocking(False)
        transport, connection = await loop.create_datagram_endpoint(
            lambda: create(QuicConnection(configuration=configuration)), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    try:
        connection.connect(address)
        await connection.wait_connected()
        yield connection
    finally:
        connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.wait_closed(), 0.2)
        transport.close()


class _HubConnection(CoalescedSending, QuicConnectionProtocol):
    """One QUIC connection to the hub: decodes frames per stream and hands them to the client."""

    # A command's EXIT usually follows its EXEC within a few ms: it carries the ACK then.
    ack_delay = sending.MAX_ACK_DELAY

    def __init__(self, *args: Any, client: AgentClient, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client
        self.closed = False
        self._decoders: dict[int, protocol.FrameDecoder] = {}

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
                logger.error("hub sent a bad frame: %s", error)
                self.close(CLOSE_PROTOCOL, str(error))
                return
            for frame in frames:
                self.client._on_frame(self, event.stream_id, frame)
            if event.end_stream:
                self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.StreamReset):
            self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = True
            self.client._on_terminated(self, event)


class AgentClient:
    """Holds one connection to the hub at a time, forever, and serves its commands."""

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
        # Tells the hub that a new connection is this same process (not a second agent).
        self.instance = secrets.token_hex(8)
        self.collector = status.StatusCollector(settings.watch)
        self.connected = asyncio.Event()
        self._rng = rng or random.Random()
        self._shutdown = asyncio.Event()
        self._connection: _HubConnection | None = None
        self._control_stream: int | None = None
        self._welcome: asyncio.Future[protocol.Frame] | None = None
        self._last_heard = 0.0
        self._command_streams: dict[tuple[int, int], str] = {}
        self._close_reason = ""
        self._finisher: asyncio.Future[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and serve until shut down; reconnect with backoff after any loss."""
        settings = self.settings
        if settings.ca_file is not None:
            trust = f"trusting the CA file {settings.ca_file}"
        elif settings.pin_sha256:
            trust = f"pinning certificate SHA-256 {normalize_fingerprint(settings.pin_sha256)}"
        else:
            trust = "trusting the system CA roots"
        types = settings.deploy_types
        logger.info(
            "quicflow agent %s starting as %r: hub %s (%s), work root %s, deploy types %s%s",
            agent.__version__,
            settings.name,
            self._hub,
            trust,
            self.executor.work_dir,
            "all" if types is None else (",".join(sorted(types)) or "none"),
            "".join(f", label {k}={v}" for k, v in sorted(settings.labels.items())),
        )
        delays = backoff_delays(settings.backoff_initial, settings.backoff_cap, self._rng)
        finisher = self._finisher = asyncio.ensure_future(self._finish_on_shutdown())
        try:
            # During a shutdown the agent keeps (re)connecting until its running commands
            # have finished, so that their results can still be delivered.
            while not finisher.done():
                welcomed = False
                refusal: HubRefused | None = None
                try:
                    # A revocation while connected is followed by one prompt retry (the
                    # token file may hold a new token); its refusal then counts.
                    welcomed = await self._session()
                except HubRefused as refused:
                    refusal = refused
                except HubUntrusted as distrust:
                    logger.error("not connecting: %s", distrust)
                except TokenUnreadable as unreadable:
                    refusal = HubRefused(str(unreadable), "auth")
                except (OSError, ConnectionError, TimeoutError) as failure:
                    logger.warning(
                        "cannot reach hub %s: %s",
                        self._hub,
                        failure or type(failure).__name__,
                    )
                if finisher.done():
                    break
                if welcomed:
                    delays = backoff_delays(
                        self.settings.backoff_initial, self.settings.backoff_cap, self._rng
                    )
                if refusal is not None and refusal.permanent:
                    await self._wait_after_refusal(refusal, finisher)
                    continue
                if refusal is not None:
                    logger.error(
                        "hub %s refused agent %r: %s", self._hub, self.settings.name, refusal
                    )
                delay = next(delays)
                logger.info("reconnecting in %.1f s", delay)
                await asyncio.wait({finisher}, timeout=delay)
        finally:
            if not finisher.done():
                finisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finisher
            # Results stay on disk: a restarted agent still answers the hub's re-attach.
            await self.executor.shutdown(0)
            self.executor.close()

    @property
    def _hub(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"

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

    async def _wait_after_refusal(
        self, refusal: HubRefused, finisher: asyncio.Future[None]
    ) -> None:
        """Wait ``refused_retry`` s, or until the token file changes, or shutdown."""
        retry = self.settings.refused_retry
        cure = " or as soon as the token file changes" if self.settings.token_file else ""
        logger.error(
            "hub %s refused agent %r (%s): %s; retrying in %.0f s%s",
            self._hub,
            self.settings.name,
            refusal.code or "refused",
            refusal,
            retry,
            cure,
        )
        signature = self._token_file_signature()
        deadline = time.monotonic() + retry
        while not finisher.done() and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait({finisher}, timeout=min(remaining, 1.0))
            if self.settings.token_file is not None and self._token_file_signature() != signature:
                logger.info("token file %s changed: reconnecting now", self.settings.token_file)
                return

    def request_shutdown(self) -> None:
        """Begin a clean shutdown (SIGTERM): finish or cancel commands, report, close."""
        if not self._shutdown.is_set():
            logger.info("shutting down: letting running commands finish")
        self._shutdown.set()

    async def _finish_on_shutdown(self) -> None:
        await self._shutdown.wait()
        await self.executor.shutdown(self.settings.shutdown_grace)
        connection = self._connection
        if connection is None or connection.closed:
            return
        # Give the hub a moment to acknowledge the last results before closing under them.
        deadline = time.monotonic() + 2.0
        while self.executor.undelivered() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        connection.close(CLOSE_NORMAL, "agent shutting down")

    # --- one connection -----------------------------------------------------------------

    def _configuration(self) -> QuicConfiguration:
        settings = self.settings
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[protocol.ALPN],
            # Heartbeats keep the connection alive; this is only the backstop.
            idle_timeout=max(3 * settings.heartbeat + 2.0, 5.0),
            max_data=8 << 20,
            max_stream_data=4 << 20,
            server_name=settings.host,
        )
        if settings.ca_file is not None:
            configuration.verify_mode = ssl.CERT_REQUIRED
            configuration.load_verify_locations(cafile=str(settings.ca_file))
        elif settings.pin_sha256:
            # Chain and name checks are replaced by the pin check in _verify_pin, made right
            # after the handshake and before a byte (the token) is sent.  aioquic still
            # verifies the CertificateVerify signature, so the hub holds the pinned key.
            configuration.verify_mode = ssl.CERT_NONE
        else:
            configuration.verify_mode = ssl.CERT_REQUIRED  # system (certifi) roots
        return configuration

    async def _session(self) -> bool:
        """One connection from handshake to loss; True if the hub welcomed us."""
        settings = self.settings
        token = self._token()
        loop = asyncio.get_running_loop()
        create = functools.partial(_HubConnection, client=self)
        async with contextlib.AsyncExitStack() as stack:
            connection = await asyncio.wait_for(
                stack.enter_async_context(
                    _open_connection(settings.host, settings.port, self._configuration(), create)
                ),
                timeout=10.0,
            )
            assert isinstance(connection, _HubConnection)
            self._verify_pin(connection)
            self._close_reason = ""
            self._connection = connection
            self._control_stream = connection.new_stream_id()
            self._welcome = loop.create_future()
            self._last_heard = time.monotonic()
            hello = protocol.Hello(
                name=settings.name,
                token=token,
                labels=settings.labels,
                hostname=socket.gethostname(),
                os=f"{platform.system()} {platform.release()}",
                agent_version=agent.__version__,
                heartbeat=settings.heartbeat,
                instance=self.instance,
            )
            connection.send(
                self._control_stream,
                protocol.encode(protocol.FrameKind.HELLO, protocol.hello_to_meta(hello)),
            )
            try:
                frame = await asyncio.wait_for(asyncio.shield(self._welcome), timeout=10.0)
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
                self._hub,
                settings.name,
                frame.meta.get("hub_version") or "?",
                hashlib.sha256(der).hexdigest().upper() if der else "?",
                settings.heartbeat,
            )
            self.connected.set()
            try:
                await self._serve(connection)
            finally:
                self.connected.clear()
                self.executor.detach_all()
                self._command_streams.clear()
                self._connection = None
            return True
        return False  # pragma: no cover - the context manager does not swallow errors

    def _verify_pin(self, connection: _HubConnection) -> None:
        pin = self.settings.pin_sha256
        if not pin or self.settings.ca_file is not None:
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

    async def _serve(self, connection: _HubConnection) -> None:
        interval = self.settings.heartbeat
        status_every = self.settings.status_interval
        last_report: protocol.StatusReport | None = None
        next_status = 0.0
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            while not closed.done():
                now = time.monotonic()
                if now - self._last_heard > 3 * interval:
                    logger.warning("hub silent for %.1f s: reconnecting", now - self._last_heard)
                    connection.close(CLOSE_HUB_SILENT, "hub missed 3 heartbeats")
                    break
                assert self._control_stream is not None
                connection.send(
                    self._control_stream,
                    protocol.encode(protocol.FrameKind.HEARTBEAT, {"time": time.time()}),
                )
                if self.collector.has_sources():
                    report = await asyncio.to_thread(self.collector.collect)
                    if now >= next_status or status.changed(last_report, report):
                        connection.send(
                            self._control_stream,
                            protocol.encode(
                                protocol.FrameKind.STATUS, protocol.status_to_meta(report)
                            ),
                        )
                        last_report, next_status = report, now + status_every
                finisher = self._finisher
                await asyncio.wait({closed, *([finisher] if finisher else [])}, timeout=interval)
                if finisher is not None and finisher.done():
                    # Shut down while this connection was being set up: close it now.
                    connection.close(CLOSE_NORMAL, "agent shutting down")
                    break
        finally:
            closed.cancel()
        if not self._shutdown.is_set():
            logger.warning(
                "connection to hub %s lost: %s", self._hub, self._close_reason or "closed"
            )

    # --- frames from the hub ------------------------------------------------------------

    def _on_frame(self, connection: _HubConnection, stream_id: int, frame: protocol.Frame) -> None:
        self._last_heard = time.monotonic()
        kind = protocol.FrameKind
        if stream_id == self._control_stream:
            if (
                frame.kind in (kind.WELCOME, kind.ERROR)
                and self._welcome
                and not self._welcome.done()
            ):
                self._welcome.set_result(frame)
            elif frame.kind is kind.ERROR:
                self._close_reason = str(frame.meta.get("reason"))
                logger.error("hub: %s", self._close_reason)
            elif frame.kind is kind.CANCEL:
                self.executor.cancel(str(frame.meta.get("command_id")))
            return
        key = (id(connection), stream_id)
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
            self._command_streams[key] = request.command_id

            def send(data: bytes, end_stream: bool) -> None:
                connection.send(stream_id, data, end_stream)

            try:
                self.executor.submit(
                    request,
                    send,
                    resume_seq=int(frame.meta.get("resume_seq") or 0),
                    attach_only=bool(frame.meta.get("attach_only")),
                    cancel=bool(frame.meta.get("cancel")),
                )
            except Exception as failure:  # noqa: BLE001 - e.g. a full disk; tell the hub
                logger.exception("cannot start command %s", request.command_id)
                result = protocol.ExecResult(request.command_id, None, error=f"agent: {failure}")
                send(protocol.encode(kind.EXIT, protocol.result_to_meta(result)), True)
        elif frame.kind is kind.ACK:
            command_id = self._command_streams.get(key)
            if command_id is not None:
                seq = frame.meta.get("seq")
                self.executor.acknowledge(
                    command_id, None if seq is None else int(seq), bool(frame.meta.get("exit"))
                )
                if frame.meta.get("exit"):
                    self._command_streams.pop(key, None)

    def _on_terminated(
        self, connection: _HubConnection, event: events.ConnectionTerminated
    ) -> None:
        if event.reason_phrase and not self._close_reason:
            self._close_reason = event.reason_phrase
        if self._welcome is not None and not self._welcome.done():
            reason = event.reason_phrase or "connection closed before the hub answered"
            self._welcome.set_exception(
                HubRefused(reason) if event.reason_phrase else ConnectionError(reason)
            )
