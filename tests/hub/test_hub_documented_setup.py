"""The README's agent setup, run as documented: every command a separate process, real QUIC.

``quicflow agent-token create web-1 > web-1.token``, ``quicflow hub fingerprint``,
``quicflow serve`` and ``quicflow agent --pin-sha256 FP --token-file web-1.token`` -- once
in the reconciler's directory with the default data dir, once with ``--data DIR``.  The
agent must be let in and run the deploy step the reconciler sends; ``quicflow agents``
lists it (from the data dir and from the API); ``quicflow agent-token revoke`` disconnects
it within one heartbeat.  Earlier the CLI commands used the data dir itself while the hub
used ``DATA/hub``, and every agent set up this way was refused.

The suite runs as root in CI, so the agent gets ``--allow-root`` there (an agent refuses
root otherwise); nothing else differs from the README's commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitrepos import ConfigRepo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AGENT_HEARTBEAT = 2.0
CONFIG = {
    "quicflow.yaml": """\
settings:
  poll_interval: 1s
users:
  - {username: alice, email: alice@example.com, is_admin: true}
agents:
  - {name: web-1, labels: {role: web}}
""",
    "projects/shop/project.yaml": """\
members:
  - {user: alice, role: owner}
deploy:
  type: script
  script: {run: 'echo "shop $QUICFLOW_VERSION" > release.txt'}
""",
    "projects/shop/environments/prod.yaml": 'version: "1.0.0"\ntargets:\n  - {agent: web-1}\n',
}


def quicflow() -> list[str]:
    """The installed ``quicflow`` command (``python -m reconciler`` from a bare checkout)."""
    found = shutil.which("quicflow")
    return [found] if found else [sys.executable, "-m", "reconciler"]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one ``quicflow`` command to completion; fail the test with its output if it fails."""
    result = subprocess.run(
        [*quicflow(), *args], cwd=cwd, env=ENV, text=True, capture_output=True, timeout=60
    )
    assert result.returncode == 0, f"quicflow {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def wait_for(log: Path, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """Wait until ``log`` matches ``pattern``; the match."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if match := re.search(pattern, text):
            return match
        assert time.monotonic() < deadline, f"{pattern!r} not in {log.name}:\n{text}"
        time.sleep(0.05)


class Processes:
    """Long-running processes of one test, each logging to a file; stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], cwd: Path) -> Path:
        log = self.directory / f"{name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [*quicflow(), *args], cwd=cwd, env=ENV, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started.append(process)
        return log

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("data_option", ["default", "--data"])
def test_readme_agent_setup_connects_runs_a_step_lists_and_revokes(
    tmp_path: Path, processes: Processes, data_option: str
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(CONFIG, message="shop on web-1")
    server_dir = tmp_path / "reconciler"
    server_dir.mkdir()
    host_dir = tmp_path / "web-1"  # the agent's host: it only gets the token file
    host_dir.mkdir()
    if data_option == "default":
        data: list[str] = []  # commands run in the reconciler's directory: .quicflow
        data_dir = server_dir / ".quicflow"
    else:
        data_dir = tmp_path / "state"
        data = ["--data", str(data_dir)]

    # The README's steps, in order, on the reconciler's host.
    token_file = host_dir / "web-1.token"  # quicflow agent-token create web-1 > web-1.token
    token_file.write_text(run(["agent-token", "create", "web-1", *data], server_dir).stdout)
    token_file.chmod(0o600)
    pin = run(["hub", "fingerprint", *data], server_dir).stdout.strip()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", pin)
    serve_log = processes.start(
        "serve",
        [
            "serve",
            "--repo",
            str(repo.path),
            *data,
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
        ],
        server_dir,
    )
    hub = wait_for(
        serve_log, r"hub listening on 127\.0\.0\.1:(\d+) \(udp\), certificate SHA-256 (\S+),"
    )
    # The running hub presents the certificate whose pin was printed.
    assert hub.group(2) == pin
    quic_port = int(hub.group(1))
    http_port = int(wait_for(serve_log, r"QUIC-Flow serving http://127\.0\.0\.1:(\d+)").group(1))

    # On the agent's host.
    work_root = host_dir / "work"
    agent_log = processes.start(
        "agent",
        [
            "agent", "--server", f"127.0.0.1:{quic_port}", "--name", "web-1",
            "--labels", "role=web", "--pin-sha256", pin, "--token-file", str(token_file),
            "--work-root", str(work_root), "--heartbeat", str(AGENT_HEARTBEAT),
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        host_dir,
    )  # fmt: skip
    wait_for(
        agent_log, rf"connected to hub 127\.0\.0\.1:{quic_port} as 'web-1' .*{pin.replace(':', '')}"
    )
    wait_for(serve_log, r"agent 'web-1' connected from 127\.0\.0\.1:\d+")
    # The reconciler deploys shop/prod to web-1: the step ran inside the agent's work root.
    release = work_root / "quicflow" / "shop" / "prod" / "release.txt"
    deadline = time.monotonic() + 30
    while not release.exists():
        assert time.monotonic() < deadline, (
            f"no deploy step ran on the agent\n{serve_log.read_text()}\n{agent_log.read_text()}"
        )
        time.sleep(0.1)
    assert release.read_text() == "shop 1.0.0\n"

    # quicflow agents: from the hub's snapshot in the data dir, and from the API.
    deadline = time.monotonic() + 10
    while True:
        listing = json.loads(run(["agents", *data, "--format", "json"], server_dir).stdout)
        rows = {row["name"]: row for row in listing["agents"]}
        if rows.get("web-1", {}).get("state") == "connected":
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.2)
    row = rows["web-1"]
    assert row["labels"] == {"role": "web"} and row["agent_version"]
    assert row["heartbeat_age"] is not None and row["heartbeat_age"] < 3 * AGENT_HEARTBEAT
    text = run(["agents", *data], server_dir).stdout
    assert re.search(r"^web-1\s+connected\s+\d+s ago\s+\S+\s+127\.0\.0\.1:\d+", text, re.M), text
    api_token = host_dir / "api.token"
    api_token.write_text(
        run(["token", "create", "alice", "--repo", str(repo.path), *data], server_dir).stdout
    )
    from_api = json.loads(
        run(
            ["agents", "--api", f"http://127.0.0.1:{http_port}", "--token-file", str(api_token),
             "--format", "json"],
            server_dir,
        ).stdout
    )  # fmt: skip
    assert [(r["name"], r["labels"]) for r in from_api["agents"]] == [("web-1", {"role": "web"})]

    # Revoking as documented disconnects the running agent within one heartbeat.
    run(["agent-token", "revoke", "web-1", *data], server_dir)
    revoked_at = time.monotonic()
    wait_for(agent_log, r"token of agent 'web-1' was revoked", timeout=AGENT_HEARTBEAT)
    assert time.monotonic() - revoked_at < AGENT_HEARTBEAT
    wait_for(serve_log, r"agent 'web-1' disconnected: token revoked")
    # It tries once more, is refused, and then waits long instead of hammering the hub.
    wait_for(
        agent_log,
        r"hub 127\.0\.0\.1:\d+ refused agent 'web-1' \(auth\): unknown agent 'web-1'.*retrying in 300 s",
    )
