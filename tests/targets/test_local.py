"""The local executor: live output, timeouts that kill the group, and exactly once across a crash.

The crash tests SIGKILL a real process running a ``LocalExecutor`` (``localsteps.CHILD``)
in the middle of a command that counts its runs, then ask a second process for the same
command id: the command must be adopted or answered from the journal -- run once -- and
its result be the first process's command's.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from localsteps import COUNTING, Reconciler, alive, group_members, kill, output_of, wait_for

from reconciler.targets import processes
from reconciler.targets.commands import TargetRef
from reconciler.targets.local import LocalExecutor

pytestmark = pytest.mark.integration

COMMAND = "r-20240101000000-abcdef:deploy:t1#1:t1/deploy#1"


def only_entry(data: Path) -> processes.Entry:
    (path,) = [p for p in processes.journal_dir(data).glob("*/*") if p.is_dir()]
    return processes.Entry(path)


def leader_of(data: Path) -> int:
    assert wait_for(lambda: only_entry(data).leader() is not None)
    leader = only_entry(data).leader()
    assert leader is not None
    return leader[0]


# -- in one process ----------------------------------------------------------------------


async def test_output_reaches_the_handler_while_the_command_runs(tmp_path: Path) -> None:
    executor = LocalExecutor(data_dir=tmp_path / "data")
    started = time.monotonic()
    seen: list[tuple[float, str, str]] = []
    result = await executor.run(
        TargetRef("t1", "local", work_dir=str(tmp_path / "work")),
        "r:t1/talk#1",
        "echo one; echo oops >&2; sleep 1; echo two",
        {},
        10,
        lambda channel, text: seen.append((time.monotonic() - started, channel, text)),
    )
    assert result.ok and not result.adopted, result
    stdout = [(at, text) for at, channel, text in seen if channel == "stdout"]
    assert "".join(text for _, text in stdout) == "one\ntwo\n"
    assert [text for _, channel, text in seen if channel == "stderr"] == ["oops\n"]
    first = next(at for at, text in stdout if "one" in text)
    last = next(at for at, text in stdout if "two" in text)
    assert first < 0.8 < last, seen  # "one" arrived a second before the command ended


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    work = tmp_path / "work"
    executor = LocalExecutor(data_dir=tmp_path / "data")
    result = await executor.run(
        TargetRef("t1", "local", work_dir=str(work)),
        "r:t1/stuck#1",
        "sleep 30 & echo $! > background; sleep 30",
        {},
        0.5,
        lambda channel, text: None,
    )
    assert result.timed_out and result.exit_code is None, result
    assert 0.4 < result.duration < 3, result
    background = int((work / "background").read_text())
    assert wait_for(lambda: not alive(background), 5), "the background child survived"
    assert wait_for(lambda: not group_members(leader_of(tmp_path / "data")), 5)


async def test_a_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    work = tmp_path / "work"
    executor = LocalExecutor(data_dir=tmp_path / "data")
    running = asyncio.ensure_future(
        executor.run(
            TargetRef("t1", "local", work_dir=str(work)),
            "r:t1/long#1",
            "sleep 30 & echo $! > background; sleep 30",
            {},
            None,
            lambda channel, text: None,
        )
    )
    assert await asyncio.to_thread(wait_for, (work / "background").exists)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    background = int((work / "background").read_text())
    assert wait_for(lambda: not alive(background), 5), "the background child survived"
    ending = only_entry(tmp_path / "data").ending()
    assert ending is not None and ending.outcome is processes.Outcome.CANCELLED


async def test_exit_codes_and_signals_are_reported_as_before(tmp_path: Path) -> None:
    executor = LocalExecutor(data_dir=tmp_path / "data")
    target = TargetRef("t1", "local", work_dir=str(tmp_path / "work"))
    failed = await executor.run(target, "r:t1/a#1", "exit 3", {}, None, lambda c, t: None)
    assert (failed.exit_code, failed.signal, failed.ok) == (3, None, False)
    killed = await executor.run(target, "r:t1/b#1", "kill -TERM $$", {}, None, lambda c, t: None)
    assert (killed.exit_code, killed.signal) == (-15, 15)
    missing = LocalExecutor("/nonexistent/shell", data_dir=tmp_path / "data")
    broken = await missing.run(target, "r:t1/c#1", "true", {}, None, lambda c, t: None)
    assert broken.exit_code is None and "cannot start" in broken.error, broken


async def test_the_command_gets_the_signal_state_of_a_plain_child(tmp_path: Path) -> None:
    """No signal ignored or blocked that a shell the reconciler starts directly would not have."""
    show = "grep -E '^Sig(Ign|Blk)' /proc/self/status"
    plain = subprocess.run(["/bin/sh", "-c", show], capture_output=True, text=True, check=True)
    seen: list[str] = []
    result = await LocalExecutor(data_dir=tmp_path / "data").run(
        TargetRef("t1", "local", work_dir=str(tmp_path / "work")),
        "r:t1/signals#1",
        show,
        {},
        None,
        lambda channel, text: seen.append(text),
    )
    assert result.ok
    assert "".join(seen) == plain.stdout


async def test_the_same_id_twice_in_one_process_runs_twice(tmp_path: Path) -> None:
    """Repeated checks reuse an id within a process; only another process's entry is adopted."""
    work = tmp_path / "work"
    executor = LocalExecutor(data_dir=tmp_path / "data")
    target = TargetRef("t1", "local", work_dir=str(work))
    for _ in range(2):
        result = await executor.run(target, "health", "echo x >> ran", {}, None, lambda c, t: None)
        assert result.ok and not result.adopted
    assert (work / "ran").read_text() == "x\nx\n"


async def test_output_files_are_removed_once_delivered(tmp_path: Path) -> None:
    executor = LocalExecutor(data_dir=tmp_path / "data")
    await executor.run(
        TargetRef("t1", "local", work_dir=str(tmp_path / "work")),
        "r:t1/secret#1",
        "echo s3cret",
        {},
        None,
        lambda c, t: None,
    )
    entry = only_entry(tmp_path / "data")
    assert entry.state() is processes.State.ENDED
    assert not (entry.path / "stdout").exists() and not (entry.path / "stderr").exists()


# -- across a SIGKILL of the reconciler ---------------------------------------------------


def test_a_command_running_when_the_reconciler_died_is_adopted_and_runs_once(
    tmp_path: Path,
) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "sleep 1.5; echo finished; exit 7"
    first = world.start(COMMAND, script, timeout=30)
    assert wait_for(world.started), "the command never started"
    kill(first)
    leader = leader_of(world.data)
    assert alive(leader), "the step died with the reconciler"

    second = world.run(COMMAND, script, timeout=30)

    assert world.runs() == 1, "the step ran twice"
    assert second["exit_code"] == 7 and second["adopted"], second
    assert "finished" in output_of(second), second  # the rest of its output was streamed
    assert second["duration"] >= 1.5, second  # counted from the first start
    assert not alive(leader)


def test_a_command_that_ended_while_no_reconciler_ran_is_answered_not_rerun(
    tmp_path: Path,
) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "sleep 0.5; echo done; exit 4"
    first = world.start(COMMAND, script, timeout=30)
    assert wait_for(world.started)
    kill(first)
    assert wait_for(lambda: only_entry(world.data).state() is processes.State.ENDED)

    second = world.run(COMMAND, script, timeout=30)

    assert world.runs() == 1
    assert second["exit_code"] == 4 and second["adopted"], second
    assert output_of(second) == "started\ndone\n"  # nobody had read it yet: all of it


def test_a_command_finished_before_the_crash_is_not_run_again(tmp_path: Path) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "exit 5"
    first = world.start(COMMAND, script, timeout=30, hang=True)
    assert first.stdout is not None
    assert '"exit_code": 5' in first.stdout.readline()  # it reported, then died unrecorded
    kill(first)

    second = world.run(COMMAND, script, timeout=30)

    assert world.runs() == 1
    assert second["exit_code"] == 5 and second["adopted"], second
    # A command id never seen runs: the journal does not just refuse to run things.
    third = world.run(COMMAND.replace("deploy#1", "deploy#2"), script, timeout=30)
    assert world.runs() == 2 and not third["adopted"], third


def test_an_adopted_command_keeps_the_deadline_it_started_with(tmp_path: Path) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "sleep 30"
    began = time.monotonic()
    first = world.start(COMMAND, script, timeout=3)
    assert wait_for(world.started)
    kill(first)
    leader = leader_of(world.data)

    second = world.run(COMMAND, script, timeout=3)

    assert second["timed_out"] and second["adopted"], second
    assert 2.8 < second["duration"] < 4.5, second
    assert time.monotonic() - began < 6  # not a fresh 3 s from the adoption
    assert wait_for(lambda: not group_members(leader), 5)
    assert world.runs() == 1


def test_a_command_nobody_watches_is_still_timed_out_by_its_supervisor(tmp_path: Path) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "sleep 30"
    first = world.start(COMMAND, script, timeout=1)
    assert wait_for(world.started)
    kill(first)
    leader = leader_of(world.data)
    assert wait_for(lambda: not group_members(leader), 5), "the step outlived its deadline"
    ending = only_entry(world.data).ending()
    assert ending is not None and ending.outcome is processes.Outcome.TIMED_OUT

    second = world.run(COMMAND, script, timeout=1)
    assert second["timed_out"] and second["adopted"], second
    assert world.runs() == 1


def test_a_step_whose_supervisor_was_killed_is_lost_not_rerun(tmp_path: Path) -> None:
    world = Reconciler(tmp_path / "data", tmp_path / "work")
    script = COUNTING + "sleep 30"
    first = world.start(COMMAND, script, timeout=60)
    assert wait_for(world.started)
    kill(first)
    leader = leader_of(world.data)
    members = group_members(leader)
    subprocess.run(["kill", "-KILL", str(leader)], check=True)  # the supervisor alone
    assert wait_for(lambda: not alive(leader))
    assert any(alive(pid) for pid in members if pid != leader)  # its command lives on

    second = world.run(COMMAND, script, timeout=60)

    assert second["exit_code"] is None and second["error"].startswith("lost:"), second
    assert second["adopted"]
    assert wait_for(lambda: not group_members(leader), 5), "what it left was not killed"
    assert world.runs() == 1
