"""The local executor: commands as processes on the reconciler's own host (demo, tests).

Each command runs detached, in a session of its own led by a small supervisor, and is
journalled under the data dir by its command id (``processes``): output goes to files
that are streamed while it runs, and its exit is recorded even when no reconciler is
alive to see it. So a reconciler killed mid-step neither orphans the step nor runs it
twice: the restarted one, asked for the same command id, adopts the process if it still
runs (streaming its output, keeping the deadline it started with) or answers with its
recorded result. A timeout or a cancel kills the whole process group.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.targets import processes
from reconciler.targets.commands import CommandResult, OutputHandler, TargetRef
from reconciler.targets.processes import Entry, Outcome, State

#: How often a running command's output files and state are looked at.
POLL = 0.05


class LocalExecutor:
    """Runs commands as local processes in the target's work directory, journalled."""

    def __init__(self, shell: str = "/bin/sh", data_dir: Path | None = None):
        """Journal commands under ``data_dir`` (without one: in a directory of this object's own,
        so commands are journalled only as long as it lives and nothing is adopted later)."""
        self.shell = shell
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="quicflow-local-steps-"))
            weakref.finalize(self, _remove_quietly, data_dir)
        self.data_dir = Path(data_dir)
        directory = processes.journal_dir(self.data_dir)
        self.journal = processes.Journal(directory)
        # Entries whose result was handed out, oldest first: dropped after the retention.
        self._delivered: collections.deque[tuple[float, Path]] = collections.deque()

    async def run(
        self,
        target: TargetRef,
        command_id: str,
        script: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_output: OutputHandler,
        cwd: str | None = None,
    ) -> CommandResult:
        self._prune()
        workdir = Path(cwd or target.work_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        entry, new = self.journal.claim(command_id, _fingerprint(self.shell, script, workdir))
        state = State.UNSTARTED if new else entry.state()
        process = None
        if state is State.UNSTARTED:
            # New, or journalled by a process that died before it could start it.
            entry.begin(command_id, timeout, target=target.name, cwd=str(workdir))
            try:
                process = await processes.spawn(
                    entry, self.shell, script, workdir, {**_base_env(), **env}
                )
            except OSError as failure:
                entry.end(Outcome.FAILED_TO_START, f"cannot start: {failure}")
        ending = await _follow(entry, on_output, process)
        entry.forget_output()
        self._delivered.append((time.time(), entry.path))
        return _result(ending, entry, adopted=state is not State.UNSTARTED)

    def sweep(self, keep: Callable[[str], bool]) -> processes.Swept:
        """At start: kill what runs for runs no one will resume (``processes.sweep``)."""
        return processes.sweep(self.data_dir, keep)

    def abandon(self, run: str) -> tuple[str, ...]:
        """Kill what still runs for ``run``, which will never ask for it again."""
        return processes.abandon(self.data_dir, run)

    def _prune(self) -> None:
        horizon = time.time() - processes.RETENTION
        while self._delivered and self._delivered[0][0] < horizon:
            _remove_quietly(self._delivered.popleft()[1])


async def _follow(
    entry: Entry, on_output: OutputHandler, process: asyncio.subprocess.Process | None
) -> processes.Ending:
    """Stream ``entry``'s output until it ends (or its deadline passes); its ending.

    ``process`` is the supervisor when this process started it; without one the command
    is adopted (or ended long ago) and its supervisor is watched through the entry's lock.
    """
    output = processes.Output(entry)
    exited = asyncio.ensure_future(process.wait()) if process is not None else None
    try:
        while True:
            output.pump(on_output)
            ending = entry.ending()
            if ending is not None:
                break
            gone = exited.done() if exited is not None else not entry.running()
            if gone:
                # The supervisor always records before it exits: gone without a record,
                # it was killed; what it left of its group goes too.
                ending = entry.ending()
                if ending is None:
                    entry.kill()
                    ending = entry.end(Outcome.LOST, processes.LOST_DETAIL)
                break
            deadline = entry.deadline
            left = None if deadline is None else deadline - processes.clock()
            if left is not None and left <= 0:
                ending = entry.end(Outcome.TIMED_OUT)
                if ending.outcome is Outcome.TIMED_OUT:
                    entry.kill()
                break
            pause = POLL if left is None else min(POLL, left)
            if exited is not None:
                await asyncio.wait({exited}, timeout=pause)
            else:
                await asyncio.sleep(pause)
        if exited is not None:
            await exited  # reap the supervisor: it exits once the ending is recorded
    except asyncio.CancelledError:
        if entry.end(Outcome.CANCELLED).outcome is Outcome.CANCELLED:
            entry.kill()
        if exited is not None:
            await asyncio.shield(exited)
        raise
    finally:
        output.pump(on_output, final=True)
        output.close()
    return ending


def _result(ending: processes.Ending, entry: Entry, adopted: bool) -> CommandResult:
    duration = max(0.0, ending.at - entry.started)
    outcome = ending.outcome
    if outcome is Outcome.EXITED:
        code = ending.code
        return CommandResult(
            exit_code=code,
            duration=duration,
            signal=-code if code is not None and code < 0 else None,
            adopted=adopted,
        )
    return CommandResult(
        exit_code=None,
        duration=duration,
        timed_out=outcome is Outcome.TIMED_OUT,
        cancelled=outcome is Outcome.CANCELLED,
        error="" if outcome in (Outcome.TIMED_OUT, Outcome.CANCELLED) else ending.detail,
        adopted=adopted,
    )


def _fingerprint(shell: str, script: str, workdir: Path) -> str:
    """What makes two commands with one id the same command (their env may name the run)."""
    return hashlib.sha256(f"{shell}\0{script}\0{workdir}".encode()).hexdigest()


def _remove_quietly(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}
