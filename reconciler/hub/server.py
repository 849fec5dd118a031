"""The hub's QUIC server and the command API the engine uses (the only hub module importing aioquic).

``Hub`` listens on one UDP port.  Each agent connection must open with HELLO and a valid
token; anything else gets an ERROR frame saying why and the connection is closed.  The
hub keeps the registry of connected agents, answers heartbeats, declares an agent lost
after 3 missed heartbeats (its own announced interval), and disconnects agents whose token
is revoked (also when ``quicflow agent-token revoke`` changed the token file from another
process: the watchdog looks at the file at least once a second), cancelling what they run.

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
agent stays away longer than ``reconnect_grace`` fails with ``TemporaryError``.

Protocol kinds and encoding: see ``agent.protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

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
# 200 agents connecting at once overflow the default ~200 KB UDP receive buffer and cost
# seconds of retransmits; 4 MiB holds several full handshake flights of all of them.
SOCKET_BUFFER = 4 << 20
# Let an ERROR frame reach the agent before the CONNECTION_CLOSE that follows it.
ERROR_CLOSE_DELAY = 0.05
HELLO_TIMEOUT = 10.0
# How long a connected agent has to answer a PING when a second one claims its name.
CLAIM_TIMEOUT = 2.0


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


class _AgentConnection(CoalescedSending, QuicConnectionProtocol):
    """One agent's QUIC connection: frame decoding and sending; the logic lives in ``Hub``."""

    def __init__(self, *args: Any, hub: Hub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.name: str | None = None
        self.token = ""
        self.heartbeat = hub.heartbeat_interval
        self.instance = ""
        self.address = ""
        self.control_stream: int | None = None
        self.last_heard = time.monotonic()
        self.closed = False
        self.commands: dict[int, _Pending] = {}
        self._decoders: dict[int, protocol.FrameDecoder] = {}
        # A peer that never says a valid HELLO does not get to hold a connection open.
        self._loop.call_later(HELLO_TIMEOUT, self._require_hello)

    def _require_hello(self) -> None:
        if self.name is None and not self.closed:
            self.close_with(CLOSE_AUTH, f"no valid HELLO within {HELLO_TIMEOUT:g} s")

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Note the agent's address, then feed the datagram to aioquic."""
        if not self.address:
            self.address = f"{addr[0]}:{addr[1]}"
        super().datagram_received(data, addr)

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

    def quic_event_received(self, event: events.QuicEvent) -> None:
        """Decode stream data into frames; report the end of the connection."""
        if isinstance(event, events.StreamDataReceived):
            decoder = self._decoders.setdefault(event.stream_id, protocol.FrameDecoder())
            try:
                frames = decoder.feed(event.data)
            except protocol.ProtocolError as error:
                self.refuse("protocol", str(error), CLOSE_PROTOCOL)
                return
            if frames:
                self.last_heard = time.monotonic()
                self.hub._on_frames(self, event.stream_id, frames)
            if event.end_stream:
                self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.StreamReset):
            self._decoders.pop(event.stream_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = True
            self.hub._on_terminated(self)


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
        socket_buffer: int = SOCKET_BUFFER,
        claim_timeout: float = CLAIM_TIMEOUT,
    ) -> None:
        """``data_dir`` is the hub's own directory (``locations.hub_dir`` of the data dir)."""
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
        self._socket_buffer = socket_buffer
        self.claim_timeout = claim_timeout
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
        self._server: QuicServer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load or create the TLS identity and token store, bind the UDP port, start serving."""
        self.identity = tls.ensure_identity(self.data_dir, self._certificate, self._key)
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
            lambda: QuicServer(configuration=configuration, create_protocol=create), sock=sock
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
        for connection in list(self._connections.values()):
            connection.close_with(CLOSE_NORMAL, "hub shutting down")
        if self._server is not None:
            self._server.close()
            self._server = None
        self._connections.clear()
        for info in self.registry.all():
            self.registry.remove(info.name)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                snapshots.write, self.data_dir, self._snapshot(time.time(), running=False)
            )
        # Let the CONNECTION_CLOSE datagrams and the transport's own close run.
        await asyncio.sleep(0)

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
            connection.send(
                connection.control_stream,
                protocol.encode(protocol.FrameKind.HEARTBEAT, {"time": time.time()}),
            )
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
                pending.future.set_exception(
                    errors.TemporaryError(
                        f"agent {pending.agent!r} lost while running {pending.request.command_id!r}"
                        f" (not back within {self.reconnect_grace:g} s)"
                    )
                )

    def _notify(self) -> None:
        self._snapshot_due = True
        self._changed.set()
        self._changed = asyncio.Event()
