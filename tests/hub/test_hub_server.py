"""Hub and agents over real QUIC on loopback: registry, exec, auth, failures and recovery.

Agents run as ``python -m agent`` subprocesses with a 0.5 s heartbeat, so "lost after 3
missed heartbeats" takes 1.5 s here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent import client, protocol
from agent.protocol import ExecRequest, ExecResult, GitPullRequest, ProcessStatus
from reconciler import errors
from reconciler.hub.server import Hub

if TYPE_CHECKING:
    from conftest import Fleet, UdpRelay

pytestmark = pytest.mark.integration


def command_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class Output:
    """Collects output chunks with their arrival time."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes, float]] = []

    def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data, time.monotonic()))

    def text(self, stream: str = "stdout") -> str:
        return b"".join(d for s, d, _ in self.chunks if s == stream).decode()

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert time.monotonic() < deadline, f"{text!r} never arrived: {self.text()!r}"
            await asyncio.sleep(0.02)


async def test_agents_register_with_labels_and_are_selected(hub: Hub, fleet: Fleet) -> None:
    fleet.spawn(hub, "web-1", labels="role=web,zone=a")
    fleet.spawn(hub, "web-2", labels="role=web,zone=b")
    fleet.spawn(
        hub,
        "db-1",
        labels="role=db,zone=a",
        extra=("--watch", str(os.getpid()), "--status-interval", "0.2"),
    )
    await hub.wait_for_agents(["web-1", "web-2", "db-1"], timeout=10)

    assert [a.name for a in hub.agents()] == ["db-1", "web-1", "web-2"]
    assert [a.name for a in hub.select(selector={"role": "web"})] == ["web-1", "web-2"]
    assert [a.name for a in hub.select(selector={"zone": "a"})] == ["db-1", "web-1"]
    assert [a.name for a in hub.select(names=["web-2", "db-1"], selector={"role": "web"})] == [
        "web-2"
    ]
    info = hub.select(names=["web-1"])[0]
    assert info.labels == {"role": "web", "zone": "a"}
    assert info.hostname and info.os.startswith("Linux") and info.agent_version
    assert info.address.startswith("127.0.0.1:")
    assert info.connected_since <= info.last_heartbeat <= time.time()

    # Heartbeats advance; the watched process (this test process) is reported.
    first = info.last_heartbeat
    for _ in range(50):
        await asyncio.sleep(0.1)
        report = hub.status("db-1")
        if report is not None and hub.select(names=["web-1"])[0].last_heartbeat > first:
            break
    assert hub.select(names=["web-1"])[0].last_heartbeat > first
    report = hub.status("db-1")
    assert report is not None
    assert report.processes[0].pid == os.getpid()
    assert report.processes[0].state in {"running", "sleeping"}
    assert report.processes[0].memory_bytes > 0
    # web-1 watches no process; it reports only where a Docker socket gives it containers.
    web = hub.status("web-1")
    assert web is None or web.processes == ()


async def test_exec_streams_output_live_from_several_agents(hub: Hub, fleet: Fleet) -> None:
    names = ["a-1", "a-2", "a-3"]
    agents = {name: fleet.spawn(hub, name, labels="role=app") for name in names}
    await hub.wait_for_agents(names, timeout=10)

    outputs = {name: Output() for name in names}
    script = 'echo "start $QF_NAME"; sleep 0.6; echo oops >&2; echo end; exit 3'
    requests = {
        name: ExecRequest(command_id=command_id(), script=script, env={"QF_NAME": name})
        for name in names
    }
    results = await asyncio.gather(
        *(hub.execute(name, requests[name], on_output=outputs[name]) for name in names)
    )
    finished = time.monotonic()
    for name, result in zip(names, results, strict=True):
        assert result.command_id == requests[name].command_id
        assert result.exit_code == 3 and result.signal is None and not result.ok
        assert 0.5 < result.duration < 5
        assert outputs[name].text() == f"start {name}\nend\n"
        assert outputs[name].text("stderr") == "oops\n"
        # Streamed: the first line arrived well before the command finished.
        assert finished - outputs[name].chunks[0][2] > 0.4

    # argv, cwd (inside the agent's work root) and stdin.
    output = Output()
    cwd = agents["a-1"].work_dir / "app"
    result = await hub.execute(
        "a-1",
        ExecRequest(
            command_id=command_id(),
            argv=["sh", "-c", "pwd; cat"],
            cwd=str(cwd),
            stdin=b"from stdin\n",
        ),
        on_output=output,
    )
    assert result.ok and output.text() == f"{cwd}\nfrom stdin\n"

    # A big output arrives whole and in order (flow-controlled, not buffered).
    output = Output()
    result = await hub.execute(
        "a-2", ExecRequest(command_id=command_id(), argv=["seq", "1", "300000"]), on_output=output
    )
    assert result.ok
    assert output.text() == "".join(f"{i}\n" for i in range(1, 300001))

    # A program that does not exist is reported, not raised.
    result = await hub.execute("a-3", ExecRequest(command_id=command_id(), argv=["/no/such"]))
    assert result.exit_code is None and "cannot start" in (result.error or "")


async def test_timeout_cancel_and_repeated_command_id(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.spawn(hub, "worker")
    await hub.wait_for_agents(["worker"], timeout=10)

    result = await hub.execute(
        "worker", ExecRequest(command_id=command_id(), argv=["sleep", "30"], timeout=0.5)
    )
    assert result.timed_out and not result.cancelled
    assert result.exit_code is None and result.signal == 15
    assert result.duration < 5

    output = Output()
    request = ExecRequest(command_id=command_id(), script="echo ready; sleep 30")
    running = asyncio.ensure_future(hub.execute("worker", request, on_output=output))
    await output.wait_for("ready")
    await hub.cancel("worker", request.command_id)
    result = await asyncio.wait_for(running, 10)
    assert result.cancelled and not result.timed_out and result.signal == 15

    # The same id twice: run once, the second call returns the stored result.
    marker = tmp_path / "ran"
    request = ExecRequest(command_id=command_id(), argv=["sh", "-c", f"echo x >> {marker}; exit 7"])
    first = await hub.execute("worker", request)
    second = await hub.execute("worker", request)
    assert first == second and first.exit_code == 7
    assert marker.read_text() == "x\n"


async def test_git_pull_fetches_checks_out_and_restarts(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    source = tmp_path / "app"
    source.mkdir()
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@e"]
    for argv in (["git", "init", "-q", "-b", "main", str(source)],):
        await (await asyncio.create_subprocess_exec(*argv)).wait()
    (source / "VERSION").write_text("1\n")
    for argv in (git + ["add", "."], git + ["commit", "-qm", "v1"], git + ["tag", "v1"]):
        await (await asyncio.create_subprocess_exec(*argv)).wait()
    (source / "VERSION").write_text("2\n")
    for argv in (git + ["commit", "-qam", "v2"],):
        await (await asyncio.create_subprocess_exec(*argv)).wait()

    app_host = fleet.spawn(hub, "app-host")
    await hub.wait_for_agents(["app-host"], timeout=10)
    target = app_host.work_dir / "deploy"  # git directories live inside the work root
    output = Output()
    result = await hub.git_pull(
        "app-host",
        GitPullRequest(
            command_id=command_id(),
            repo_url=str(source),
            ref="v1",
            directory=str(target),
            restart_script="echo restarted $(cat VERSION)",
        ),
        on_output=output,
    )
    assert result.ok, output.chunks
    assert (target / "VERSION").read_text() == "1\n"
    assert "restarted 1" in output.text()
    result = await hub.git_pull(
        "app-host",
        GitPullRequest(
            command_id=command_id(), repo_url=str(source), ref="main", directory=str(target)
        ),
    )
    assert result.ok and (target / "VERSION").read_text() == "2\n"
    result = await hub.git_pull(
        "app-host",
        GitPullRequest(
            command_id=command_id(), repo_url=str(source), ref="no-such-ref", directory=str(target)
        ),
    )
    assert result.exit_code not in (0, None)


async def test_execute_on_unknown_agent_is_temporary(hub: Hub) -> None:
    with pytest.raises(errors.TemporaryError, match="not connected"):
        await hub.execute("nobody", ExecRequest(command_id=command_id(), argv=["true"]))


async def test_wrong_token_and_unknown_agent_are_refused_with_a_reason(
    hub: Hub, fleet: Fleet
) -> None:
    assert hub.tokens is not None
    hub.tokens.create("guarded")
    wrong = fleet.spawn(hub, "guarded", token="qfa_not-the-token")
    stranger = fleet.spawn(hub, "stranger", token="qfa_whatever")
    # Issuing the token in spawn() is skipped when a token is given, so "stranger" is unknown.
    assert not hub.tokens.knows("stranger")
    await wrong.wait_log("invalid token for agent 'guarded'")
    await stranger.wait_log("unknown agent 'stranger'")
    assert hub.agents() == []


async def test_revoked_token_disconnects_the_agent(hub: Hub, fleet: Fleet) -> None:
    from reconciler.hub import tokens

    agent = fleet.spawn(hub, "doomed")
    await hub.wait_for_agents(["doomed"], timeout=10)
    # Revoke from "another process": a separate store on the same file, as the CLI does.
    assert tokens.TokenStore(hub.data_dir).revoke("doomed")
    for _ in range(50):
        if not hub.agents():
            break
        await asyncio.sleep(0.1)
    assert hub.agents() == []
    await agent.wait_log("revoked")
    await agent.wait_log("unknown agent 'doomed'")  # it retried and stays out
    assert hub.agents() == []


async def test_agent_refuses_hub_with_wrong_fingerprint_and_accepts_ca(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    from reconciler.hub import tls

    impostor = fleet.spawn(hub, "careful", pin="AB" * 32)
    await impostor.wait_log("does not match the pinned")
    assert hub.agents() == []

    other = tls.ensure_identity(tmp_path / "other-hub")
    wrong_ca = fleet.spawn(hub, "careful-ca", ca=other.certificate)
    await wrong_ca.wait_log("cannot reach hub")
    assert hub.agents() == []

    assert hub.identity is not None
    fleet.spawn(hub, "trusting", ca=hub.identity.certificate)
    await hub.wait_for_agents(["trusting"], timeout=10)
    assert [a.name for a in hub.agents()] == ["trusting"]


async def test_agent_killed_mid_command(hub: Hub, fleet: Fleet, tmp_path: Path) -> None:
    agent = fleet.spawn(hub, "victim")
    await hub.wait_for_agents(["victim"], timeout=10)
    output = Output()
    running = asyncio.ensure_future(
        hub.execute(
            "victim",
            ExecRequest(command_id=command_id(), script=f": {tmp_path}; echo go; sleep 20; :"),
            on_output=output,
        )
    )
    await output.wait_for("go")
    started = time.monotonic()
    agent.kill()
    with pytest.raises(errors.TemporaryError, match="lost while running"):
        await asyncio.wait_for(running, 15)
    # 3 missed heartbeats (1.5 s) plus the reconnect grace (3 s).
    assert time.monotonic() - started < 8
    assert hub.agents() == []


async def test_restarted_agent_does_not_rerun_an_interrupted_command(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    agent = fleet.spawn(hub, "phoenix")
    await hub.wait_for_agents(["phoenix"], timeout=10)
    output = Output()
    request = ExecRequest(
        command_id=command_id(), script=f"echo run >> {marker}; echo go; sleep 20; :"
    )
    running = asyncio.ensure_future(hub.execute("phoenix", request, on_output=output))
    await output.wait_for("go")
    agent.kill()
    fleet.spawn(hub, "phoenix", token=None, work_dir=agent.work_dir)
    result = await asyncio.wait_for(running, 15)
    assert result.exit_code is None and "interrupted" in (result.error or "")
    assert marker.read_text() == "run\n"


async def test_hub_restart_agents_come_back_by_themselves(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    names = ["r-1", "r-2"]
    for name in names:
        fleet.spawn(hub, name)
    await hub.wait_for_agents(names, timeout=10)
    port = hub.port
    await hub.stop()
    await asyncio.sleep(0.3)
    assert hub.agents() == []

    again = Hub(hub.data_dir, port=port, heartbeat_interval=0.5)
    await again.start()
    try:
        await again.wait_for_agents(names, timeout=10)
        result = await again.execute("r-1", ExecRequest(command_id=command_id(), argv=["true"]))
        assert result.ok
    finally:
        await again.stop()


async def test_an_agent_sees_a_dead_hub_port_at_once_and_comes_back_when_it_listens(
    hub: Hub, fleet: Fleet
) -> None:
    """A hub process that died without closing (SIGKILL) leaves its port unreachable: the
    agent learns it from the kernel's ICMP answer, not from three missed heartbeats, and
    an attempt against the closed port fails at once instead of after the 10 s timeout."""
    agent = fleet.spawn(hub, "k-1")
    await hub.wait_for_agents(["k-1"], timeout=10)
    port = hub.port
    assert hub._transport is not None
    hub._transport.abort()  # the process is gone: no CONNECTION_CLOSE, the port closes
    log = await agent.wait_log("lost: hub unreachable")
    await agent.wait_log("(port unreachable)")
    assert "no answer" not in log and "TimeoutError" not in agent.log_text()

    again = Hub(hub.data_dir, port=port, heartbeat_interval=0.5)
    await again.start()
    try:
        await again.wait_for_agents(["k-1"], timeout=10)
    finally:
        await again.stop()
        hub._connections.clear()  # the aborted hub's connections went with its transport


async def test_network_cut_result_arrives_exactly_once(
    hub: Hub, fleet: Fleet, relay: tuple[UdpRelay, int], tmp_path: Path
) -> None:
    hub.reconnect_grace = 15.0
    udp_relay, port = relay
    fleet.spawn(hub, "far", port=port)
    await hub.wait_for_agents(["far"], timeout=10)
    connected_since = hub.agents()[0].connected_since

    marker = tmp_path / "effects"
    output = Output()
    request = ExecRequest(
        command_id=command_id(),
        script=f"echo before; sleep 1.5; echo after; echo effect >> {marker}",
    )
    results: list[ExecResult] = []

    async def run() -> None:
        results.append(await hub.execute("far", request, on_output=output))

    running = asyncio.ensure_future(run())
    await output.wait_for("before")
    # Longer than 3 heartbeats: both sides give the connection up and the agent reconnects.
    await udp_relay.cut(3.0)
    assert udp_relay.dropped > 0
    assert not running.done()
    await asyncio.wait_for(running, 15)

    assert len(results) == 1 and results[0].ok
    assert output.text() == "before\nafter\n"  # each chunk exactly once, in order
    assert marker.read_text() == "effect\n"
    assert hub.agents()[0].connected_since > connected_since  # it really reconnected


async def test_sigterm_finishes_running_command_and_reports(hub: Hub, fleet: Fleet) -> None:
    agent = fleet.spawn(hub, "leaving")
    await hub.wait_for_agents(["leaving"], timeout=10)
    output = Output()
    running = asyncio.ensure_future(
        hub.execute(
            "leaving",
            ExecRequest(command_id=command_id(), script="echo begun; sleep 0.8; echo done"),
            on_output=output,
        )
    )
    await output.wait_for("begun")
    agent.terminate()
    result = await asyncio.wait_for(running, 10)
    assert result.ok and output.text() == "begun\ndone\n"
    assert await agent.wait_exit(10) == 0
    assert hub.agents() == []


async def test_frozen_agent_is_lost_after_three_missed_heartbeats_and_returns(
    hub: Hub, fleet: Fleet
) -> None:
    agent = fleet.spawn(hub, "sleepy")
    await hub.wait_for_agents(["sleepy"], timeout=10)
    os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        while hub.agents():
            assert time.monotonic() - stopped < 5, "agent not declared lost"
            await asyncio.sleep(0.05)
        # 3 heartbeats of 0.5 s, checked every 0.125 s.
        assert 1.4 < time.monotonic() - stopped < 4
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)
    await hub.wait_for_agents(["sleepy"], timeout=10)


async def test_command_survives_a_hub_restart_and_is_not_rerun(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    """The engine retries a step with the same id after a hub restart: it runs only once."""
    marker = tmp_path / "effects"
    fleet.spawn(hub, "steady")
    await hub.wait_for_agents(["steady"], timeout=10)
    request = ExecRequest(
        command_id=command_id(), script=f"echo begun; sleep 1; echo effect >> {marker}"
    )
    output = Output()
    running = asyncio.ensure_future(hub.execute("steady", request, on_output=output))
    await output.wait_for("begun")
    port = hub.port
    await hub.stop()
    with pytest.raises(errors.TemporaryError, match="hub stopped"):
        await running

    again = Hub(hub.data_dir, port=port, heartbeat_interval=0.5)
    await again.start()
    try:
        await again.wait_for_agents(["steady"], timeout=10)
        first = await again.execute("steady", request)
        second = await again.execute("steady", request)
    finally:
        await again.stop()
    assert first.ok and first == second
    assert marker.read_text() == "effect\n"


async def test_status_is_reported_on_change_not_only_on_interval(hub: Hub, fleet: Fleet) -> None:
    watched = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        fleet.spawn(hub, "observer", extra=("--watch", str(watched.pid), "--status-interval", "60"))
        await hub.wait_for_agents(["observer"], timeout=10)
        for _ in range(100):
            report = hub.status("observer")
            if report is not None:
                break
            await asyncio.sleep(0.05)
        assert report is not None and report.processes[0].state == "sleeping"
        watched.kill()
        await watched.wait()
        for _ in range(100):
            report = hub.status("observer")
            assert report is not None
            if report.processes[0].state == "absent":
                break
            await asyncio.sleep(0.05)
        # Well before the 60 s interval: the change itself triggered the report.
        assert report.processes[0] == ProcessStatus(str(watched.pid), None, "absent")
    finally:
        if watched.returncode is None:
            watched.kill()
            await watched.wait()


async def test_unsupported_protocol_version_is_refused_with_a_reason(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-process agent speaking a future protocol version is told why it is refused."""
    assert hub.tokens is not None and hub.identity is not None
    real = protocol.hello_to_meta
    monkeypatch.setattr(protocol, "hello_to_meta", lambda hello: {**real(hello), "version": 99})
    settings = client.AgentSettings(
        host="127.0.0.1",
        port=hub.port,
        name="future",
        token=hub.tokens.create("future"),
        work_dir=tmp_path / "future",
        pin_sha256=hub.identity.fingerprint(),
        heartbeat=0.5,
    )
    agent = client.AgentClient(settings)
    running = asyncio.ensure_future(agent.run())
    try:
        for _ in range(100):
            if "unsupported protocol version 99" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "unsupported protocol version 99" in caplog.text
        assert hub.agents() == []
    finally:
        agent.request_shutdown()
        await asyncio.wait_for(running, 10)
