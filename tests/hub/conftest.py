"""Fixtures for real-QUIC tests: an in-process hub, agents as subprocesses, a controllable UDP relay.

Everything runs on loopback with ports the kernel picks (port 0), so tests can run in
parallel with other suites.  Agents run as ``python -m agent`` in their own session; the
commands an agent starts run in sessions of their own, so killing an agent orphans them
(as on a real host) and ``Fleet.cleanup`` finds them by the test's tmp path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.hub.server import Hub

HEARTBEAT = 0.5
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    """A ``python -m agent`` subprocess and where its log goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    work_dir: Path

    def log_text(self) -> str:
        """Everything the agent logged so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the agent (its commands, in sessions of their own, live on as orphans)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def crash(self) -> None:
        """SIGKILL the agent process only, as a crash would: its running steps are orphaned."""
        self.process.kill()
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM the agent only (a clean shutdown)."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the agent process to exit; its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {self.name} still running")
            await asyncio.sleep(0.05)
        return self.process.returncode

    async def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until the agent's log contains ``text``; return the log."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in agent log:\n{log}")
            await asyncio.sleep(0.05)
        return log


@dataclass
class Fleet:
    """Starts agents against a hub (or another address) and cleans them up."""

    tmp_path: Path
    agents: list[AgentProcess] = field(default_factory=list)

    def spawn(
        self,
        hub: Hub,
        name: str,
        *,
        token: str | None = None,
        labels: str = "",
        port: int | None = None,
        pin: str | None = None,
        ca: Path | None = None,
        extra: tuple[str, ...] = (),
        work_dir: Path | None = None,
    ) -> AgentProcess:
        """Start ``python -m agent`` named ``name``; a token is issued unless given."""
        assert hub.tokens is not None and hub.identity is not None
        if token is None:
            token = hub.tokens.create(name)
        work_dir = work_dir or self.tmp_path / f"work-{name}"
        log = self.tmp_path / f"agent-{name}-{len(self.agents)}.log"
        verification = (
            ("--ca", str(ca)) if ca else ("--pin-sha256", pin or hub.identity.fingerprint())
        )
        argv = [
            sys.executable, "-m", "agent",
            "--server", f"127.0.0.1:{port or hub.port}",
            "--name", name,
            "--labels", labels,
            *verification,
            "--work-dir", str(work_dir),
            "--heartbeat", str(HEARTBEAT),
            "--shutdown-grace", "5",
            # CI runs the suite as root; a real agent refuses root unless told.
            *(("--allow-root",) if os.geteuid() == 0 else ()),
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "QUICFLOW_AGENT_TOKEN": token, "PYTHONPATH": str(REPO_ROOT)}
        with log.open("wb") as handle:
            process = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        agent = AgentProcess(name, process, log, work_dir)
        self.agents.append(agent)
        return agent

    def cleanup(self) -> None:
        """Kill every agent started, and commands that outlived a killed agent."""
        for agent in self.agents:
            agent.kill()
        # Commands run in their own session, so killing an agent leaves them running (as
        # on a real host); tests mention tmp_path in such scripts so they can be found here.
        marker = str(self.tmp_path).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Agents as subprocesses, killed after the test."""
    agents = Fleet(tmp_path)
    try:
        yield agents
    finally:
        agents.cleanup()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A started hub on a free loopback UDP port with a fast heartbeat."""
    instance = Hub(tmp_path / "data", port=0, heartbeat_interval=HEARTBEAT, reconnect_grace=3.0)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


class UdpRelay(asyncio.DatagramProtocol):
    """Forwards UDP between agents and the hub; ``cut`` drops every packet for a while."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.dropping = False
        self.dropped = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    async def start(self) -> int:
        """Listen on a free port; return it."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.dropping:
            self.dropped += 1
            return
        upstream = self._upstreams.get(addr)
        if upstream is None:
            asyncio.ensure_future(self._open_upstream(addr, data))
            return
        upstream.sendto(data)

    async def _open_upstream(self, client: tuple[str, int], first: bytes) -> None:
        relay = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if relay.dropping:
                    relay.dropped += 1
                elif relay._transport is not None:
                    relay._transport.sendto(data, client)

        loop = asyncio.get_running_loop()
        if client not in self._upstreams:
            transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.target)
            self._upstreams[client] = transport
        self._upstreams[client].sendto(first)

    async def cut(self, seconds: float) -> None:
        """Drop all packets both ways for ``seconds``."""
        self.dropping = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.dropping = False

    def close(self) -> None:
        """Stop relaying."""
        for upstream in self._upstreams.values():
            upstream.close()
        if self._transport is not None:
            self._transport.close()


@pytest.fixture
async def relay(hub: Hub) -> AsyncIterator[tuple[UdpRelay, int]]:
    """A UDP relay in front of the hub: (relay, port agents should connect to)."""
    instance = UdpRelay(("127.0.0.1", hub.port))
    port = await instance.start()
    try:
        yield instance, port
    finally:
        instance.close()
