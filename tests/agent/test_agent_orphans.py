"""Orphans of a crashed agent: journalled as they start, found and killed by the next agent.

The crashed agent is a real process (``python -c`` running an ``Executor``) killed with
SIGKILL while its step runs; the step lives on in its own session, as on a real host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import executing, protocol, spawning
from agent.protocol import ExecRequest, FrameKind

REPO_ROOT = Path(__file__).resolve().parents[2]

# An agent that runs one command, says so, and waits to be killed.
AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent import executing
    from agent.protocol import ExecRequest

    async def main() -> None:
        executor = executing.Executor(Path(sys.argv[1]))
        executor.submit(ExecRequest(command_id=sys.argv[2], script=sys.argv[3]), lambda *a: None)
        print("submitted", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def ticking(marker: Path, pid_file: Path) -> str:
    """A step that notes its pid, then appends to ``marker`` every 0.1 s (a child does)."""
    return f"echo $$ > {pid_file}; (while :; do echo tick >> {marker}; sleep 0.1; done) & wait"


def session_alive(session: int) -> list[int]:
    """Pids of live (not zombie) processes in ``session``."""
    return [p.pid for p in spawning.processes() if p.session == session and p.alive]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def crashed_agents(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Agent processes a test starts; whatever is left of them is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    marker = str(tmp_path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


async def start_agent(
    started: list[subprocess.Popen[bytes]], work: Path, command_id: str, script: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(work), command_id, script],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    started.append(process)
    assert process.stdout is not None
    line = await asyncio.to_thread(process.stdout.readline)
    assert line == b"submitted\n"
    return process


async def test_a_restarted_agent_kills_the_orphans_of_its_journal(
    tmp_path: Path, crashed_agents: list[subprocess.Popen[bytes]]
) -> None:
    work, marker, pid_file = tmp_path / "work", tmp_path / "ticks", tmp_path / "pid"
    agent = await start_agent(crashed_agents, work, "deploy-1", ticking(marker, pid_file))
    await wait_for(lambda: marker.exists() and pid_file.exists())
    session = int(pid_file.read_text())
    agent.kill()  # the agent only: its step runs on in a session of its own
    agent.wait()
    size = marker.stat().st_size
    await wait_for(lambda: marker.stat().st_size > size)
    orphans = session_alive(session)
    assert session in orphans and len(orphans) >= 2  # the shell, its loop and a sleep

    restarted = executing.Executor(work)
    try:
        [result] = await restarted.recover()
        assert session_alive(session) == []
        assert result.command_id == "deploy-1" and result.exit_code is None
        assert result.error is not None
        assert result.error.startswith("interrupted: the agent restarted while this ran")
        assert str(session) in result.error and "were killed before the agent reconnected" in (
            result.error
        )
        stopped = marker.stat().st_size
        await asyncio.sleep(0.5)
        assert marker.stat().st_size == stopped
        # The hub's re-attach (or a resend) gets that result; nothing runs again.
        frames: list[protocol.Frame] = []
        decoder = protocol.FrameDecoder()
        request = ExecRequest(command_id="deploy-1", script=ticking(marker, pid_file))
        assert (
            restarted.submit(request, lambda data, end: frames.extend(decoder.feed(data))) is None
        )
        assert frames[-1].kind is FrameKind.EXIT
        assert protocol.result_from_meta(frames[-1].meta) == result
        assert await restarted.recover() == []  # once per agent process
    finally:
        restarted.close()
    # The result is journalled: the next agent has nothing left to settle.
    again = executing.Executor(work)
    try:
        assert await again.recover() == []
        assert again.store.load("deploy-1") == result
    finally:
        again.close()


async def test_a_step_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, crashed_agents: list[subprocess.Popen[bytes]]
) -> None:
    work, marker, pid_file = tmp_path / "work", tmp_path / "ticks", tmp_path / "pid"
    script = (
        f"trap '' TERM; echo $$ > {pid_file}; while :; do echo tick >> {marker}; sleep 0.1; done"
    )
    agent = await start_agent(crashed_agents, work, "stubborn", script)
    await wait_for(lambda: marker.exists() and pid_file.exists())
    session = int(pid_file.read_text())
    agent.kill()
    agent.wait()
    restarted = executing.Executor(work)
    try:
        [result] = await restarted.recover(grace=0.5)
    finally:
        restarted.close()
    assert session_alive(session) == []
    assert "were killed before the agent reconnected" in (result.error or "")


async def test_a_command_none_of_whose_processes_survived(tmp_path: Path) -> None:
    store = executing.ResultStore(tmp_path / "work" / "results")
    store.mark_started("quick")  # the agent died before (or right after) its step ended
    store.close()
    executor = executing.Executor(tmp_path / "work")
    try:
        [result] = await executor.recover()
    finally:
        executor.close()
    assert result.error == (
        "interrupted: the agent restarted while this ran; none of its processes were left running"
    )


async def test_commands_of_a_live_agent_on_the_same_work_dir_are_left_alone(
    tmp_path: Path, crashed_agents: list[subprocess.Popen[bytes]]
) -> None:
    work, marker, pid_file = tmp_path / "work", tmp_path / "ticks", tmp_path / "pid"
    await start_agent(crashed_agents, work, "theirs", ticking(marker, pid_file))
    await wait_for(lambda: pid_file.exists())
    session = int(pid_file.read_text())
    second = executing.Executor(work)  # a second agent on the same work dir, by mistake
    try:
        assert await second.recover() == []
    finally:
        second.close()
    assert session in session_alive(session)


async def test_the_journal_keeps_step_processes_until_the_result(tmp_path: Path) -> None:
    executor = executing.Executor(tmp_path / "work")
    frames: list[protocol.Frame] = []
    decoder = protocol.FrameDecoder()
    execution = executor.submit(
        ExecRequest(command_id="c", argv=["sleep", "30"]),
        lambda data, end: frames.extend(decoder.feed(data)),
    )
    assert execution is not None
    await wait_for(lambda: bool(executor.store.unfinished()["c"]))
    [journaled] = executor.store.unfinished()["c"]
    me = spawning.identify(os.getpid())
    assert me is not None and journaled.agent == (os.getpid(), me.start_time)
    step = spawning.identify(journaled.pid)
    assert step is not None and step.session == journaled.session == journaled.pid
    assert step.start_time == journaled.start_time and journaled.boot == spawning.boot_id()
    # On disk as soon as the process exists (another store would compact the file away
    # from under this one, so the journal is read as text).
    lines = (tmp_path / "work" / "results" / executing.JOURNAL).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [executing.JournaledProcess.from_record(r) for r in records if "pid" in r] == [journaled]
    execution.cancel()
    await execution.wait()
    assert executor.store.unfinished() == {}
    executor.close()
    finished = executing.ResultStore(tmp_path / "work" / "results")
    assert finished.unfinished() == {}
    finished.close()


def test_survivors_never_mistake_a_recycled_pid_or_another_boot(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        # Identified once it sleeps: a snapshot taken while it still starts (state R) would
        # differ from the later one in its state alone.
        for _ in range(200):
            identity = spawning.identify(sleeper.pid)
            if identity is not None and identity.name == "sleep" and identity.state == "S":
                break
            time.sleep(0.01)
        assert identity is not None and identity.state == "S"
        boot = spawning.boot_id()
        journaled = executing.JournaledProcess(
            identity.pid,
            identity.session,
            identity.group,
            identity.start_time,
            identity.name,
            boot,
            (1, 1),
        )
        everything = spawning.processes()
        assert executing.survivors(journaled, everything, boot) == [identity]
        # The same pid with another start time is another process: the step's session is gone.
        earlier = executing.JournaledProcess(
            identity.pid,
            identity.session,
            identity.group,
            identity.start_time - 1,
            "sh",
            boot,
            (1, 1),
        )
        assert executing.survivors(earlier, everything, boot) == []
        assert executing.survivors(journaled, everything, "another-boot") == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_parse_stat_reads_a_name_with_spaces_and_parentheses() -> None:
    fields = " ".join(str(n) for n in range(4, 53))
    identity = spawning.parse_stat(f"42 (a (b) c) S {fields}\n")
    # field 5 is the group, 6 the session, 22 the start time (the numbers count fields here)
    assert (identity.pid, identity.group, identity.session, identity.start_time) == (42, 5, 6, 22)
    assert identity.name == "a (b) c" and identity.alive


def test_compaction_keeps_the_processes_of_unfinished_commands_only(tmp_path: Path) -> None:
    me = spawning.identify(os.getpid())
    assert me is not None
    store = executing.ResultStore(tmp_path)
    for command_id in ("running", "done"):
        store.mark_started(command_id)
        store.mark_process(command_id, me)
    store.save(protocol.ExecResult("done", 0))
    store.close()
    for _ in range(2):  # each open compacts the journal
        reopened = executing.ResultStore(tmp_path)
        unfinished = reopened.unfinished()
        reopened.close()
    assert list(unfinished) == ["running"]
    [journaled] = unfinished["running"]
    assert (journaled.pid, journaled.start_time) == (me.pid, me.start_time)
