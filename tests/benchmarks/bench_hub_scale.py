"""Benchmark: 10,000 idle agents on one hub — connect, heartbeats, memory, reconnect storm.

Run as a plain script (not collected by pytest)::

    python tests/benchmarks/bench_hub_scale.py [--agents 10000] [--workers 4]
        [--heartbeat 15] [--steady 45]

The hub runs in a process of its own (so its RSS and CPU are its own), started with
``--hub``; the agents are real ``agent.client.AgentClient`` objects — real QUIC, real TLS
with the pinned certificate, HELLO with a token of their own, the agent's own heartbeat
and its reconnect backoff with jitter — many per worker process (``--workers``), sharing
one executor per process since they run nothing. Their host status collection is turned
off (a simulated agent has no host of its own to report). It prints:

1. connect: seconds until all agents are connected, starting all at once;
2. steady state over ``--steady`` seconds: the oldest heartbeat age the hub saw (on time
   means below 1.5 heartbeat intervals) and how many agents it declared lost; hub CPU
   per second;
3. hub RSS before any agent, with all connected, and per agent (aims: ≤ 1.5 GB,
   ≤ 150 KB per agent);
4. reconnect storm: the hub is stopped (SIGTERM: it closes every connection) and started
   again on the same port and data dir after ``--down`` seconds; seconds from the restart
   until all agents are back, and how many reconnect attempts the agents made meanwhile.

Tokens are written straight into the hub's token file (``agent-tokens.json``, the format
``reconciler.hub.tokens`` reads): issuing 10,000 through ``TokenStore.create`` would
rewrite the file 10,000 times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from agent import client, executing, status  # noqa: E402
from reconciler.hub import (  # noqa: E402
    locations,
    server,  # noqa: E402
    tls,
    tokens,
)
from reconciler.hub.server import Hub  # noqa: E402

MEMORY_AIM = 1.5 * 1024**3
PER_AGENT_AIM = 150 * 1024


# --- the hub process -------------------------------------------------------------------


class _LostCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lost" in record.getMessage():
            self.lost += 1


def resident_bytes(pid: int | str = "self") -> int:
    """The resident set size of process ``pid``."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def run_hub(data_dir: Path, port: int, heartbeat: float) -> None:
    """Serve as the hub until SIGTERM, printing a JSON line of figures every second."""
    counter = _LostCounter()
    logging.getLogger("reconciler.hub").addHandler(counter)
    # Every simulated agent comes from 127.0.0.1: the per-address bound on connections
    # still to say HELLO is there for one host, not for ten thousand behind one address.
    hub = Hub(
        data_dir,
        port=port,
        heartbeat_interval=heartbeat,
        preauth_per_address=server.PREAUTH_TOTAL,
    )
    await hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        now = time.time()
        agents = hub.agents()
        oldest = max((now - a.last_heartbeat for a in agents), default=0.0)
        line = {
            "connected": len(agents),
            "oldest_heartbeat": round(oldest, 2),
            "lost": counter.lost,
            "rss": resident_bytes(),
            "cpu": time.process_time(),
            "time": now,
        }
        print(json.dumps(line), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await hub.stop()


# --- the agent workers ----------------------------------------------------------------


class _Attempts(logging.Handler):
    """Counts the agents' connection attempts that failed (their "cannot reach" lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cannot reach hub" in message or "reconnecting in" in message:
            self.failed += 1


async def run_worker(config_path: Path) -> None:
    """Run many idle agents in this process until SIGTERM; print attempts on exit."""
    config = json.loads(config_path.read_text())
    attempts = _Attempts()
    logging.getLogger("agent").addHandler(attempts)
    logging.getLogger("agent").setLevel(logging.INFO)
    logging.getLogger("agent").propagate = False
    base = Path(config["work_dir"])
    shared = executing.Executor(base / f"worker-{os.getpid()}")
    # A real agent has a host of its own; thousands simulated in one process share a
    # core, and all handshaking at once would starve each other past the hub's and the
    # agent's 10 s timeouts. At most this many of a worker's agents handshake at a time.
    handshakes = asyncio.Semaphore(config["handshakes"])
    opening = client._open_connection

    @contextlib.asynccontextmanager
    async def one_at_a_time(*args, **kwargs):  # type: ignore[no-untyped-def]
        async with handshakes:
            context = opening(*args, **kwargs)
            connection = await context.__aenter__()
        try:
            yield connection
        except BaseException as error:
            if not await context.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await context.__aexit__(None, None, None)

    client._open_connection = one_at_a_time  # type: ignore[assignment]
    nowhere = Path("/nonexistent/docker.sock")
    clients = []
    for name, token in config["agents"].items():
        agent = client.AgentClient(
            client.AgentSettings(
                host="127.0.0.1",
                port=config["port"],
                name=name,
                token=token,
                work_dir=base,
                pin_sha256=config["pin"],
                heartbeat=config["heartbeat"],
                shutdown_grace=0.5,
            ),
            executor=shared,
        )
        agent.collector = status.StatusCollector((), docker_socket=nowhere)
        clients.append(agent)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, lambda: [a.request_shutdown() for a in clients])
    await asyncio.gather(*(agent.run() for agent in clients))
    Path(config["attempts"]).write_text(str(attempts.failed))


# --- the benchmark ----------------------------------------------------------------------


class HubProcess:
    """The hub as a child process, and the figures it prints."""

    def __init__(self, data_dir: Path, port: int, heartbeat: float) -> None:
        self.args = [sys.executable, __file__, "--hub", str(data_dir), str(port), str(heartbeat)]
        self.process: asyncio.subprocess.Process | None = None
        self.latest: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.latest, self.history = {}, []
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())
        await self.until(lambda f: True, 30)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            self.latest = json.loads(raw)
            self.history.append(self.latest)

    async def until(self, condition, timeout: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        next_progress = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.latest and condition(self.latest):
                return self.latest
            if time.monotonic() >= next_progress:
                next_progress += 10
                print(f"    ... {self.latest.get('connected')} connected, hub cpu "
                      f"{self.latest.get('cpu', 0):.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(0.1)
        raise TimeoutError(f"hub figures never satisfied the condition: {self.latest}")

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        await self.process.wait()
        if self._reader is not None:
            await self._reader


def write_tokens(hub_dir: Path, names: list[str]) -> dict[str, str]:
    """Issue a token per agent straight into the hub's token file; return them."""
    issued = {name: "qfa_" + secrets.token_urlsafe(32) for name in names}
    entries = {
        # What TokenStore.verify compares with: the SHA-256 of the token, in hex.
        name: {"sha256": hashlib.sha256(token.encode()).hexdigest(), "created": time.time()}
        for name, token in issued.items()
    }
    (hub_dir / tokens.TOKENS_FILE).write_text(json.dumps({"agents": entries}))
    return issued


async def run_benchmark(arguments: argparse.Namespace) -> None:
    """Start the hub and the workers, measure each phase, print the figures."""
    with tempfile.TemporaryDirectory(prefix="quicflow-scale-") as temporary:
        base = Path(temporary)
        hub_dir = locations.hub_dir(base / "data")
        hub_dir.mkdir(parents=True)
        identity = tls.ensure_identity(hub_dir)
        names = [f"sim-{i:05d}" for i in range(arguments.agents)]
        issued = write_tokens(hub_dir, names)
        port = _free_udp_port()
        hub = HubProcess(hub_dir, port, arguments.heartbeat)
        await hub.start()
        idle = hub.latest["rss"]

        workers = []
        for index in range(arguments.workers):
            chunk = names[index :: arguments.workers]
            config = base / f"worker-{index}.json"
            config.write_text(json.dumps({
                "port": port,
                "pin": identity.fingerprint(),
                "heartbeat": arguments.heartbeat,
                "work_dir": str(base / "agents"),
                "attempts": str(base / f"attempts-{index}"),
                "handshakes": arguments.handshakes,
                "agents": {name: issued[name] for name in chunk},
            }))  # fmt: skip
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--worker", str(config)
                )
            )
        try:
            started = time.monotonic()
            everyone = lambda f: f["connected"] == len(names)  # noqa: E731
            await hub.until(everyone, arguments.connect_timeout)
            connect_seconds = time.monotonic() - started

            steady_from = len(hub.history)
            lost_before = hub.latest["lost"]
            cpu_before, time_before = hub.latest["cpu"], hub.latest["time"]
            await asyncio.sleep(arguments.steady)
            steady = hub.history[steady_from:]
            oldest = max(f["oldest_heartbeat"] for f in steady)
            lost = hub.latest["lost"] - lost_before
            cpu_per_second = (hub.latest["cpu"] - cpu_before) / (hub.latest["time"] - time_before)
            full = max(f["rss"] for f in steady)
            connected_min = min(f["connected"] for f in steady)

            await hub.stop()
            await asyncio.sleep(arguments.down)
            restarted = time.monotonic()
            await hub.start()
            await hub.until(everyone, arguments.connect_timeout)
            storm_seconds = time.monotonic() - restarted
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            await asyncio.gather(*(worker.wait() for worker in workers))
            if hub.process is not None and hub.process.returncode is None:
                await hub.stop()
        retries = sum(
            int(p.read_text() or 0)
            for i in range(arguments.workers)
            if (p := base / f"attempts-{i}").exists()
        )

    per_agent = (full - idle) / len(names)
    print(f"agents: {len(names)} simulated in {arguments.workers} processes, heartbeat "
          f"{arguments.heartbeat:g} s")  # fmt: skip
    print(f"(1) all connected in {connect_seconds:.1f} s (started at once)")
    print(f"(2) steady {arguments.steady:g} s: oldest heartbeat {oldest:.1f} s "
          f"({'on time' if oldest < 1.5 * arguments.heartbeat else 'LATE'}), "
          f"{lost} declared lost, fewest connected {connected_min}; hub cpu "
          f"{cpu_per_second * 100:.1f}% of a core")  # fmt: skip
    print(f"(3) hub RSS {idle / 2**20:.0f} MiB idle, {full / 2**20:.0f} MiB with all "
          f"connected (aim ≤ {MEMORY_AIM / 2**30:.1f} GiB): {per_agent / 1024:.0f} KB per agent "
          f"(aim ≤ {PER_AGENT_AIM // 1024} KB)")  # fmt: skip
    print(f"(4) reconnect storm: hub down {arguments.down:g} s, all {len(names)} back "
          f"{storm_seconds:.1f} s after the restart; {retries} failed attempts/backoff "
          "waits logged by the agents over the whole run")  # fmt: skip


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    """Parse the arguments and run the benchmark, a hub or a worker."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--steady", type=float, default=45.0)
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument("--connect-timeout", type=float, default=900.0)
    parser.add_argument("--handshakes", type=int, default=32,
                        help="handshakes in flight per worker process")  # fmt: skip
    parser.add_argument("--worker", type=Path)
    parser.add_argument("--hub", nargs=3)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("quic").setLevel(logging.ERROR)
    if arguments.worker:
        asyncio.run(run_worker(arguments.worker))
    elif arguments.hub:
        data_dir, port, heartbeat = arguments.hub
        pass  # hub warnings go to stderr
        asyncio.run(run_hub(Path(data_dir), int(port), float(heartbeat)))
    else:
        asyncio.run(run_benchmark(arguments))


if __name__ == "__main__":
    main()
