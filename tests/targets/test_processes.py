"""The journal of local step processes: claims, the start-up sweep, abandon, the PID guard."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest
from localsteps import COUNTING, Reconciler, alive, group_members, kill, wait_for

from reconciler.targets import processes

GONE = "r-gone:deploy:t1#1:t1/deploy#1"
KEPT = "r-kept:deploy:t1#1:t1/deploy#1"


def entries(data: Path, run: str) -> list[processes.Entry]:
    folder = processes.journal_dir(data) / run
    return [processes.Entry(p) for p in sorted(folder.iterdir()) if p.is_dir()]


def leader(entry: processes.Entry) -> int:
    assert wait_for(lambda: entry.leader() is not None)
    found = entry.leader()
    assert found is not None
    return found[0]


# -- claims ------------------------------------------------------------------------------


def test_a_journal_hands_out_each_entry_once_and_a_new_one_meets_them_in_order(
    tmp_path: Path,
) -> None:
    journal = processes.Journal(tmp_path)
    first, new_first = journal.claim("r1:t/health#1", "fp")
    again, new_again = journal.claim("r1:t/health#1", "fp")
    assert new_first and new_again and first.path != again.path
    other, new_other = journal.claim("r1:t/health#1", "another script")
    assert new_other and other.path not in (first.path, again.path)

    restarted = processes.Journal(tmp_path)
    for earlier in (first, again):
        entry, new = restarted.claim("r1:t/health#1", "fp")
        assert (entry.path, new) == (earlier.path, False)
    assert restarted.claim("r1:t/health#1", "fp")[1] is True  # then a new one


def test_a_run_name_that_is_not_a_plain_file_name_gets_a_folder_anyway(tmp_path: Path) -> None:
    journal = processes.Journal(tmp_path)
    entry, _ = journal.claim("../../etc:x", "fp")
    assert tmp_path in entry.path.parents and ".." not in entry.path.relative_to(tmp_path).parts
    assert (entry.path.parent / "run").read_text() == "../../etc"


def test_an_ending_is_recorded_once_first_writer_wins(tmp_path: Path) -> None:
    entry, _ = processes.Journal(tmp_path).claim("r:x", "fp")
    first = entry.end(processes.Outcome.TIMED_OUT)
    second = entry.end(processes.Outcome.CANCELLED)
    assert first.outcome is second.outcome is processes.Outcome.TIMED_OUT
    assert entry.state() is processes.State.ENDED


# -- the start-up sweep -------------------------------------------------------------------


@pytest.mark.integration
def test_the_sweep_kills_the_orphan_of_a_run_that_is_gone_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    gone, kept = Reconciler(data, tmp_path / "gone"), Reconciler(data, tmp_path / "kept")
    script = COUNTING + "sleep 30"
    children = [gone.start(GONE, script, timeout=60), kept.start(KEPT, script, timeout=60)]
    assert wait_for(gone.started) and wait_for(kept.started)
    for child in children:
        kill(child)
    (gone_entry,) = entries(data, "r-gone")
    (kept_entry,) = entries(data, "r-kept")
    gone_group, kept_group = leader(gone_entry), leader(kept_entry)
    assert group_members(gone_group) and group_members(kept_group)

    swept = processes.sweep(data, keep=lambda run: run == "r-kept")

    assert swept.killed == (GONE,)
    assert wait_for(lambda: not group_members(gone_group), 5), "the orphan survived the sweep"
    assert group_members(kept_group), "the sweep killed a step its run may still adopt"
    ending = gone_entry.ending()
    assert ending is not None and ending.outcome is processes.Outcome.KILLED
    # Asked for again, the killed command is answered, not run a second time.
    again = gone.run(GONE, script, timeout=60)
    assert again["error"].startswith("killed:") and gone.runs() == 1, again
    assert processes.abandon(data, "r-kept") == (KEPT,)
    assert wait_for(lambda: not group_members(kept_group), 5)


@pytest.mark.integration
def test_abandon_kills_only_the_running_commands_of_its_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    world = Reconciler(data, tmp_path / "work")
    done = world.run("r-a:t1/first#1", "true")
    assert done["exit_code"] == 0
    child = world.start("r-a:t1/second#1", COUNTING + "sleep 30", timeout=60)
    assert wait_for(world.started)
    kill(child)
    running = [e for e in entries(data, "r-a") if e.state() is processes.State.RUNNING]
    assert [e.command_id for e in running] == ["r-a:t1/second#1"]
    group = leader(running[0])

    assert processes.abandon(data, "r-a") == ("r-a:t1/second#1",)
    assert wait_for(lambda: not group_members(group), 5)
    assert processes.abandon(data, "r-a") == ()
    assert processes.abandon(data, "r-never") == ()


def test_the_sweep_prunes_old_ended_entries_of_runs_it_does_not_keep(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = processes.Journal(processes.journal_dir(data))
    for command_id in ("r-old:t/a#1", "r-old:t/b#1", "r-kept:t/a#1"):
        entry, _ = journal.claim(command_id, "fp")
        entry.begin(command_id, None)
        entry.end(processes.Outcome.EXITED, code=0)

    assert processes.sweep(data, keep=lambda run: False) == processes.Swept()  # recent: kept
    later = time.time() + processes.RETENTION + 60
    swept = processes.sweep(data, keep=lambda run: run == "r-kept", now=lambda: later)
    assert swept == processes.Swept(pruned=2)
    assert not (processes.journal_dir(data) / "r-old").exists()
    assert len(entries(data, "r-kept")) == 1
    assert (
        processes.sweep(tmp_path / "no-such-data-dir", keep=lambda run: False) == processes.Swept()
    )


# -- never a stranger -----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("reused", [True, False], ids=["pid-reused", "same-process"])
def test_a_pid_that_now_names_another_process_is_never_killed(tmp_path: Path, reused: bool) -> None:
    """An entry whose recorded pid was handed to a process started at another time."""
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = processes.start_time(stranger.pid)
        assert started is not None
        entry, _ = processes.Journal(processes.journal_dir(tmp_path)).claim("r-x:t/a#1", "fp")
        entry.begin("r-x:t/a#1", None)
        (entry.path / "pid").write_text(f"{stranger.pid} {started + 1 if reused else started}\n")
        # Looks like a supervisor that still runs: someone holds the entry's lock.
        lock = os.open(entry.path / "lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            assert processes.sweep(tmp_path, keep=lambda run: False).killed == ("r-x:t/a#1",)
        finally:
            os.close(lock)
        if reused:
            time.sleep(0.3)
            assert stranger.poll() is None and alive(stranger.pid), "killed a stranger"
        else:
            assert stranger.wait(timeout=5) == -9  # the control: this one was ours
    finally:
        stranger.kill()
        stranger.wait()
