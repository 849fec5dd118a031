"""``quicflow serve`` start-up: a failed start harms nothing (issue 17, item 3), and it
listens and runs its hub as ``settings.http`` / ``settings.quic`` say (issue 18).

Real ``python -m reconciler serve`` processes on a real config repo. With its HTTP port
taken, ``serve`` used to start deploying anyway, cancel the runs when the port failed,
write "cancelled" into Git although the targets had the version, and hold the release
after a good restart until a dummy commit. Now it binds the port first and exits 1
naming ``--http``, before anything deploys: no run, no state commit, no note. A good
start afterwards deploys the release as usual, and logs one line per run start and end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS, free_ports

from reconciler.hub import locations, tls, tokens

pytestmark = pytest.mark.integration

PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
"""


def serve(repo: Path, data: Path, http: int, quic: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--repo", str(repo), "--data", str(data)]
        + ["--http", f"127.0.0.1:{http}", "--quic", f"127.0.0.1:{quic}"],
        cwd=data.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_its_http_port_taken_exits_before_any_deploy(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS + "settings:\n  poll_interval: 1s\n",
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    data = tmp_path / "data"
    deploys = data / "targets" / "app" / "dev" / "t1" / "deploys.log"
    (http,) = free_ports(1)
    taken = socket.create_server(("127.0.0.1", http))
    try:
        failed = serve(repo.path, data, http, udp_port())
        out, _ = failed.communicate(timeout=60)
    finally:
        taken.close()

    assert failed.returncode == 1, out
    assert f"--http 127.0.0.1:{http}: cannot listen there" in out
    assert "Traceback" not in out
    assert not deploys.exists()
    assert git(repo.path, "for-each-ref", "refs/quicflow", "refs/notes") == ""  # nothing in Git

    good = serve(repo.path, data, http, udp_port())
    try:
        deadline = time.monotonic() + 60
        while not (deploys.exists() and "refs/quicflow/state" in git(repo.path, "for-each-ref")):
            assert good.poll() is None, good.communicate()[0]
            assert time.monotonic() < deadline, "the good start did not deploy"
            time.sleep(0.1)
    finally:
        good.send_signal(signal.SIGTERM)
        out, _ = good.communicate(timeout=60)
    # uvicorn raises the SIGTERM again once it has stopped serving; either way it stopped.
    assert good.returncode in (0, -signal.SIGTERM), out
    assert deploys.read_text().split() == ["1.0"]
    # One line per run start and end: project/env, versions, trigger, outcome.
    started = [line for line in out.splitlines() if " started: app/dev" in line]
    ended = [line for line in out.splitlines() if " ended " in line and "app/dev" in line]
    assert len(started) == 1 and "app/dev (nothing) -> 1.0 (trigger poll)" in started[0]
    assert (
        len(ended) == 1 and "ended succeeded: app/dev (nothing) -> 1.0 (trigger poll)" in ended[0]
    )
    record = json.loads(git(repo.path, "show", "refs/quicflow/state:app/dev.json"))
    assert (record["version"], record["outcome"], record["last_failure"]) == (
        "1.0",
        "succeeded",
        None,
    )


# --- where serve listens, and its hub (issue 18) ---------------------------------------


class Served:
    """A ``serve`` process started without --http/--quic unless given; its log in a file."""

    def __init__(self, repo: Path, data: Path, *flags: str) -> None:
        self.log = data.parent / f"serve-{time.monotonic_ns()}.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "serve", "--repo", str(repo)]
                + ["--data", str(data), *flags],
                cwd=data.parent,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Wait until the log holds ``text``; the line holding it."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.text()):
            assert self.process.poll() is None, f"serve exited:\n{log}"
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{log}"
            time.sleep(0.05)
        return next(line for line in log.splitlines() if text in line)

    def exit_status(self, timeout: float = 60.0) -> int:
        """Wait for serve to exit by itself; its exit status."""
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def http_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # something answered HTTP there
    except OSError:
        return False


def hub_settings(http: int, quic: int, extra: str = "") -> str:
    return USERS + (
        "settings:\n  poll_interval: 1s\n"
        f'  http: {{listen: "127.0.0.1:{http}"}}\n'
        f'  quic:\n    listen: "127.0.0.1:{quic}"\n{extra}'
    )


async def say_hello(port: int, name: str, token: str) -> dict[str, object]:
    """HELLO as an agent would, over raw QUIC; the meta of the hub's answer (WELCOME)."""
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.asyncio.client import connect
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration

    from agent import protocol

    class Prober(QuicConnectionProtocol):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.decoder = protocol.FrameDecoder()
            self.answer: asyncio.Future[protocol.Frame] = self._loop.create_future()

        def quic_event_received(self, event: events.QuicEvent) -> None:
            if not isinstance(event, events.StreamDataReceived) or self.answer.done():
                return
            if frames := self.decoder.feed(event.data):
                self.answer.set_result(frames[0])

    configuration = QuicConfiguration(is_client=True, alpn_protocols=[protocol.ALPN])
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=Prober
    ) as connection:
        assert isinstance(connection, Prober)
        hello = protocol.Hello(name, token, {}, "probe", "test", "test", heartbeat=0.5)
        stream_id = connection._quic.get_next_available_stream_id()
        connection._quic.send_stream_data(
            stream_id, protocol.encode(protocol.FrameKind.HELLO, protocol.hello_to_meta(hello))
        )
        connection.transmit()
        frame = await asyncio.wait_for(connection.answer, 10)
    assert frame.kind is protocol.FrameKind.WELCOME, frame
    return frame.meta


def start_agent(data: Path, quic: int, name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    hub = locations.hub_dir(data)
    token = tokens.TokenStore(hub).create(name)
    argv = [sys.executable, "-m", "agent", "--server", f"127.0.0.1:{quic}", "--name", name]
    argv += ["--pin-sha256", tls.ensure_identity(hub).fingerprint()]
    argv += ["--work-dir", str(tmp_path / f"work-{name}"), "--heartbeat", "0.5"]
    argv += ["--allow-root"] if os.geteuid() == 0 else []
    with (tmp_path / f"agent-{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv,
            env={**os.environ, "QUICFLOW_AGENT_TOKEN": token, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def connected_agents(data: Path) -> list[str]:
    """``quicflow agents --format json``: the names it lists as connected."""
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "agents", "--data", str(data), "--format", "json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [a["name"] for a in json.loads(out)["agents"] if a["state"] == "connected"]


def wait_connected(data: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in connected_agents(data):
        assert time.monotonic() < deadline, f"agent {name!r} not connected"
        time.sleep(0.2)


def test_serve_listens_where_the_settings_say_and_runs_the_hub_they_describe(
    tmp_path: Path,
) -> None:
    http, quic = free_ports(1)[0], udp_port()
    repo = ConfigRepo(tmp_path / "config")
    settings = hub_settings(
        http, quic, "    heartbeat: 2s\n    reconnect_grace: 30s\n    names: [hub.test.example]\n"
    )
    repo.commit({"quicflow.yaml": settings})
    data = tmp_path / "data"
    served = Served(repo.path, data)
    agent: subprocess.Popen[bytes] | None = None
    try:
        line = served.wait_for("QUIC-Flow serving")
        assert (
            f"http://127.0.0.1:{http} (from quicflow.yaml settings.http.listen), QUIC hub on"
            f" 127.0.0.1:{quic} (from quicflow.yaml settings.quic.listen; heartbeat 2s,"
            " reconnect grace 30s)" in line
        )
        assert http_answers(http)
        certificate = (locations.hub_dir(data) / tls.CERTIFICATE_FILE).read_bytes()
        assert "hub.test.example" in tls.certificate_names(certificate)

        # The hub's heartbeat reaches agents in its answer to HELLO, and agents.json.
        token = tokens.TokenStore(locations.hub_dir(data)).create("probe")
        welcome = asyncio.run(say_hello(quic, "probe", token))
        assert welcome["heartbeat"] == 2.0
        snapshot_file = locations.hub_dir(data) / "agents.json"
        deadline = time.monotonic() + 30
        while not snapshot_file.exists():  # the hub's watchdog writes it within a beat
            assert time.monotonic() < deadline, "no agents.json"
            time.sleep(0.1)
        snapshot = json.loads(snapshot_file.read_text())
        assert snapshot["interval"] == 2.0 and snapshot["address"] == f"127.0.0.1:{quic}"

        # A restart of serve: the hub closes the agent's connection as it stops, and the
        # agent is back, by itself, once serve listens again.
        agent = start_agent(data, quic, "edge", tmp_path)
        wait_connected(data, "edge")
        served.stop()
        served = Served(repo.path, data)
        served.wait_for("HTTP server started")
        wait_connected(data, "edge")
        log = (tmp_path / "agent-edge.log").read_text()
        assert "hub shutting down" in log and log.count("connected to hub") == 2, log
    finally:
        served.stop()
        if agent is not None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    assert served.process.returncode in (0, -signal.SIGTERM), served.text()


def test_serve_flags_win_over_the_settings(tmp_path: Path) -> None:
    http, other_http = free_ports(2)
    quic, other_quic = udp_port(), udp_port()
    repo = ConfigRepo(tmp_path / "config")
    repo.commit({"quicflow.yaml": hub_settings(http, quic, "    heartbeat: 2s\n")})
    data = tmp_path / "data"
    flags = ("--http", f"127.0.0.1:{other_http}", "--quic", f"127.0.0.1:{other_quic}")
    served = Served(repo.path, data, *flags, "--hub-heartbeat", "1s")
    try:
        line = served.wait_for("QUIC-Flow serving")
        assert (
            f"http://127.0.0.1:{other_http} (from --http), QUIC hub on 127.0.0.1:{other_quic}"
            " (from --quic; heartbeat 1s, reconnect grace 4s)" in line
        )
        assert http_answers(other_http) and not http_answers(http)
    finally:
        served.stop()


def test_invalid_hub_settings_stop_serve_before_it_starts_naming_the_setting(
    tmp_path: Path,
) -> None:
    http = free_ports(1)[0]
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": hub_settings(http, 99999),
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    data = tmp_path / "data"
    failed = Served(repo.path, data)
    status = failed.exit_status()
    out = failed.text()
    assert status == 1, out
    assert "quicflow.yaml:" in out and "(at $.settings.quic.listen)" in out
    assert "'127.0.0.1:99999' is not valid: HOST:PORT" in out and "Traceback" not in out
    assert not (data / "targets").exists() and not http_answers(http)

    missing = tmp_path / "missing.pem"
    extra = f"    certificate: {missing}\n    key: {missing}\n"
    repo.commit({"quicflow.yaml": hub_settings(http, udp_port(), extra)})
    failed = Served(repo.path, data)
    status = failed.exit_status()
    out = failed.text()
    assert status == 1, out
    assert "quicflow.yaml settings.quic.certificate / key:" in out
    assert f"{missing}: cannot read it" in out and "Traceback" not in out


def test_startup_settings_come_from_quicflow_yaml_even_with_a_broken_project(
    tmp_path: Path,
) -> None:
    from reconciler import serving
    from reconciler.gitops.repository import GitRepository

    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": hub_settings(8123, 4455, '    names: ["10.0.0.5"]\n'),
            "projects/app/project.yaml": "members: []\ndeploy: {type: nonsense}\n",
        }
    )
    settings, problems = serving.startup_settings(GitRepository.open(repo.path))
    assert problems == () and settings is not None
    assert (settings.http_listen, settings.quic.listen) == ("127.0.0.1:8123", "127.0.0.1:4455")
    assert (settings.quic.heartbeat, settings.quic.reconnect_grace) == (15.0, None)
    assert settings.quic.names == ("10.0.0.5",)

    # An explicit flag wins, then the setting, then the default.
    assert serving.from_flag_setting_or_default(
        "0.0.0.0:1", "h:2", "--quic", "settings.quic.listen", "d:3"
    ) == (
        "0.0.0.0:1",
        "--quic",
    )
    assert serving.from_flag_setting_or_default(
        None, "h:2", "--quic", "settings.quic.listen", "d:3"
    ) == (
        "h:2",
        "quicflow.yaml settings.quic.listen",
    )
    assert serving.from_flag_setting_or_default(
        None, None, "--quic", "settings.quic.listen", "d:3"
    ) == ("d:3", "default")
