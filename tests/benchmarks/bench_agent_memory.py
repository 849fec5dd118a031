"""Benchmark: memory of one idle, connected agent process (the aim is ≤ 40 MiB RSS).

Run as a plain script (not collected by pytest)::

    python tests/benchmarks/bench_agent_memory.py [--idle 10] [--heartbeat 1] [--python PATH]

``--python`` runs the agents with another interpreter, e.g. that of a plain virtualenv
with QUIC-Flow installed as a host would have it (``python3 -m venv /tmp/agent-venv &&
/tmp/agent-venv/bin/pip install .``); its ``quicflow`` is the one next to it.

A hub runs in this process; each way of starting an agent is launched against it in
turn, waits until the hub lists it, stays idle for ``--idle`` seconds (heartbeats and
status samples going on), and its memory is read from ``/proc/PID/smaps_rollup``:

- ``quicflow agent`` -- the installed command, as the README and the systemd unit run it
  (``reconciler.launcher``: straight to ``agent.cli``);
- through the full command line -- ``reconciler.cli`` with every server-side command
  loaded, which is how ``quicflow agent`` ran before the launcher: the baseline;
- ``python -m agent``.

RSS counts every page the process has in memory, shared libraries included; PSS shares
those out among the processes that map them; "anonymous" is the process's own heap and
Python objects. The interpreter's start-up (``site`` and the ``.pth`` files of the
environment it runs in) is part of every figure: it is printed on its own, so that an
environment with more ``.pth`` files than a host's plain virtualenv can be told apart.
Whether the Docker SDK was loaded (a Docker socket is there and ``quic-flow[docker]`` is
installed) is printed too: it adds ~7 MiB on hosts that run containers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from reconciler.hub.server import Hub  # noqa: E402

AIM = 40 * 2**20


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and anonymous bytes of process ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "anon": fields["Anonymous"]}


def docker_loaded(pid: int) -> bool:
    """Whether the Docker SDK's modules are in the process (its HTTP stack's files)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "charset_normalizer" in maps or "/docker/" in maps


async def measure(hub: Hub, name: str, argv: list[str], idle: float, work: Path) -> dict:
    assert hub.tokens is not None and hub.identity is not None
    token = hub.tokens.create(name)
    args = [
        *argv,
        "--server", f"127.0.0.1:{hub.port}",
        "--name", name,
        "--pin-sha256", hub.identity.fingerprint(),
        "--work-dir", str(work / name),
        "--heartbeat", "1",
        *(("--allow-root",) if os.geteuid() == 0 else ()),
    ]  # fmt: skip
    env = {**os.environ, "QUICFLOW_AGENT_TOKEN": token}
    process = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    try:
        await hub.wait_for_agents([name], timeout=30)
        await asyncio.sleep(idle)
        figures = memory(process.pid)
        figures["docker"] = docker_loaded(process.pid)
        return figures
    finally:
        process.terminate()
        process.wait(10)


def startup_rss(python: str) -> int:
    """RSS of ``python`` doing nothing but start (``site`` and ``.pth`` files)."""
    out = subprocess.run(
        [python, "-c", "print(open('/proc/self/statm').read().split()[1])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout) * os.sysconf("SC_PAGE_SIZE")


async def run(arguments: argparse.Namespace) -> None:
    python = arguments.python or sys.executable
    if arguments.python:
        beside = Path(arguments.python).parent / "quicflow"
        quicflow = str(beside) if beside.exists() else None
    else:
        quicflow = shutil.which("quicflow")
    ways = {
        "quicflow agent": [quicflow, "agent"] if quicflow else None,
        "full CLI (before)": [
            python, "-c", "import sys; from reconciler.cli import main; main()", "agent",
        ],
        "python -m agent": [python, "-m", "agent"],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="quicflow-agent-memory-") as temporary:
        work = Path(temporary)
        hub = Hub(work / "hub", port=0, heartbeat_interval=arguments.heartbeat)
        await hub.start()
        try:
            print(
                f"interpreter start-up alone: {startup_rss(python) / 2**20:.1f} MiB RSS ({python})"
            )
            for index, (label, argv) in enumerate(ways.items()):
                if argv is None:
                    print(f"{label:20s} skipped: no quicflow on PATH")
                    continue
                f = await measure(hub, f"idle-{index}", argv, arguments.idle, work)
                verdict = "met" if f["rss"] <= AIM else "not met"
                print(
                    f"{label:20s} RSS {f['rss'] / 2**20:5.1f} MiB ({verdict}: ≤ 40), "
                    f"PSS {f['pss'] / 2**20:5.1f} MiB, anonymous {f['anon'] / 2**20:5.1f} MiB, "
                    f"Docker SDK {'loaded' if f['docker'] else 'not loaded'}"
                )
        finally:
            await hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--python", help="the interpreter to run the agents with")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
