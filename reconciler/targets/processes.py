"""The journal of local step processes: what a reconciler that died left running, found again.

The local executor runs every command through ``supervisor.py``, detached in a session
of its own, and keeps an entry for it under ``<data dir>/local-steps/<run>/`` (``<run>``
is what precedes the command id's first ``:`` -- for the engine, the lineage of a chain
of resumed runs). An entry is a directory:

- ``meta.json`` -- command id, start and deadline -- written before the process starts;
- ``pid`` -- the supervisor's pid (also its process group) and start time -- written by
  the supervisor before the command starts;
- ``stdout``, ``stderr`` -- the output, as files, so nothing blocks when no one reads;
- ``ending`` -- how the command ended -- written once, by whoever knows first: the
  supervisor when the command exits or its deadline passes, the executor when it times
  it out, cancels it, or finds it gone;
- ``lock`` -- held (``flock``) by the supervisor for its whole life: a lock nobody holds
  is a supervisor that is gone, whatever a PID now names.

So a reconciler restarted after a SIGKILL tells from an entry alone what became of a
command (``State``): still running (adopt it: follow its output, wait for its ending),
ended (answer with the recorded ending), never started (start it now), or lost (its
supervisor was killed before it could record anything: kill what is left of its group;
it is not run again). ``sweep``, once at start, kills the commands of runs that will
never ask for them again and prunes old entries; ``abandon`` does it for one run.

Linux semantics: ``/proc`` for start times (the guard against a reused PID) and a clock
shared by every process (``CLOCK_BOOTTIME``) for deadlines.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent import spawning
from reconciler.targets.commands import OutputHandler
from reconciler.targets.supervisor import CLOCK

JOURNAL = "local-steps"
SUPERVISOR = Path(__file__).with_name("supervisor.py")
#: How long ended entries of runs no one will resume are kept (for a look after the fact).
RETENTION = 24 * 3600.0
CHANNELS = ("stdout", "stderr")
_META, _PID, _ENDING, _LOCK, _RUN = "meta.json", "pid", "ending", "lock", "run"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def clock() -> float:
    """Seconds on a clock every process on this host shares (deadlines, durations)."""
    return time.clock_gettime(CLOCK)


def journal_dir(data_dir: Path) -> Path:
    """Where the journal of a data dir lives."""
    return Path(data_dir) / JOURNAL


def run_of(command_id: str) -> str:
    """The run a command id names: what precedes its first ``:`` (all of it without one)."""
    return command_id.partition(":")[0]


class State(StrEnum):
    """What became of a journalled command."""

    UNSTARTED = "unstarted"  # the entry exists, its process never started
    RUNNING = "running"
    ENDED = "ended"
    LOST = "lost"  # started, and its supervisor is gone without recording an ending


class Outcome(StrEnum):
    """How a command ended, as its ``ending`` file says."""

    EXITED = "exit"
    TIMED_OUT = "timeout"
    CANCELLED = "cancelled"
    FAILED_TO_START = "error"
    LOST = "lost"
    KILLED = "killed"  # by ``sweep`` or ``abandon``: its run will not ask for it again


@dataclass(frozen=True, slots=True)
class Ending:
    """How a command ended: the outcome, the exit code (negative: a signal), when, why."""

    outcome: Outcome
    code: int | None
    at: float  # on ``clock()``
    detail: str = ""

    def line(self) -> str:
        code = "-" if self.code is None else str(self.code)
        return f"{self.outcome.value} {code} {self.at:.6f} {self.detail}".rstrip() + "\n"

    @classmethod
    def parse(cls, text: str) -> Ending | None:
        parts = text.rstrip("\n").split(" ", 3)
        try:
            code = None if parts[1] == "-" else int(parts[1])
            return cls(Outcome(parts[0]), code, float(parts[2]), parts[3] if len(parts) > 3 else "")
        except (IndexError, ValueError):
            return None


class Entry:
    """One command in the journal (a directory); every question is answered from disk."""

    def __init__(self, path: Path):
        self.path = path
        self._meta: dict[str, Any] | None = None

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                self._meta = json.loads((self.path / _META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._meta = {}
        return self._meta

    @property
    def command_id(self) -> str:
        return str(self.meta.get("id", self.path.name))

    @property
    def started(self) -> float:
        return float(self.meta.get("started", clock()))

    @property
    def deadline(self) -> float | None:
        value = self.meta.get("deadline")
        return None if value is None else float(value)

    def begin(self, command_id: str, timeout: float | None, **about: str) -> None:
        """Record the command about to start: its id, start and deadline (from now)."""
        now = clock()
        meta = {
            "id": command_id,
            "started": now,
            "started_at": time.time(),
            "deadline": None if timeout is None else now + timeout,
            **about,
        }
        _write_atomically(self.path / _META, json.dumps(meta, indent=1) + "\n")
        self._meta = meta

    def state(self) -> State:
        if self.ending() is not None:
            return State.ENDED
        if self.running():
            return State.RUNNING
        if self.ending() is not None:  # it ended between the two looks
            return State.ENDED
        return State.LOST if (self.path / _PID).exists() else State.UNSTARTED

    def running(self) -> bool:
        """True while the supervisor lives (it holds the entry's lock)."""
        try:
            fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # and with it the lock, if it was free
        return False

    def ending(self) -> Ending | None:
        try:
            text = (self.path / _ENDING).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return Ending.parse(text)

    def end(self, outcome: Outcome, detail: str = "", code: int | None = None) -> Ending:
        """Record how the command ended, unless that is recorded already; return the record."""
        mine = Ending(outcome, code, clock(), detail.replace("\n", " "))
        temporary = self.path / f".ending.{os.getpid()}"
        temporary.write_text(mine.line(), encoding="utf-8")
        try:
            os.link(temporary, self.path / _ENDING)
        except FileExistsError:
            pass  # the supervisor (or another look) was first: its record stands
        finally:
            temporary.unlink()
        return self.ending() or mine

    def leader(self) -> tuple[int, int] | None:
        """The supervisor's pid (= process group) and start time, once it has written them."""
        try:
            pid, started = (self.path / _PID).read_text(encoding="ascii").split()
            return int(pid), int(started)
        except (OSError, ValueError):
            return None

    def kill(self) -> bool:
        """SIGKILL the command's whole process group; False if there is none to kill.

        The group id is the supervisor's pid. While any process of the group lives the
        kernel hands that number to no new process, so the group is ours unless the pid
        now names a process that started at another time: then the group is gone and
        the number reused, and nothing is killed.
        """
        leader = self.leader()
        if leader is None:
            return False
        pid, started = leader
        now = start_time(pid)
        if now is not None and started and now != started:
            return False
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def forget_output(self) -> None:
        """Drop the output files: delivered, and not to be kept on disk (secrets)."""
        for name in CHANNELS:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def age(self, now: float) -> float:
        """Seconds of wall time since the entry last changed (its ending, or its start)."""
        for name in (_ENDING, _META):
            with contextlib.suppress(FileNotFoundError):
                return now - (self.path / name).stat().st_mtime
        return now - self.path.stat().st_mtime


class Journal:
    """The entries of one journal directory, and which of them this process has used.

    ``claim`` hands out one entry per call: the next entry of that command id (and
    script) this journal object has not handed out yet -- one an earlier process left,
    to adopt or answer from -- or a new one. A caller that runs the same id again in
    one process (repeated checks in tests) therefore runs it again; after a restart the
    same calls meet the earlier process's entries in order.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._next: dict[Path, int] = {}

    def claim(self, command_id: str, fingerprint: str) -> tuple[Entry, bool]:
        """The entry for this call of ``command_id``, and whether it is new."""
        folder = self._run_folder(run_of(command_id))
        rest = command_id.partition(":")[2]
        digest = hashlib.sha256(f"{rest}\0{fingerprint}".encode()).hexdigest()[:32]
        stem = folder / digest
        number = self._next.get(stem, 1)
        while True:
            path = folder / f"{digest}.{number}"
            number += 1
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                self._next[stem] = number
                return Entry(path), False
            self._next[stem] = number
            return Entry(path), True

    def _run_folder(self, run: str) -> Path:
        folder = self.directory / _folder_name(run)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomically(folder / _RUN, run)
        return folder


async def spawn(
    entry: Entry, shell: str, script: str, cwd: Path, env: Mapping[str, str]
) -> asyncio.subprocess.Process:
    """Start ``script`` for ``entry`` under its supervisor, in a new session."""
    lock = os.open(entry.path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    opened = [lock]
    try:
        # Taken here and handed over, so there is no moment the command runs unlocked.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        directory = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(directory)
        outputs = []
        for name in CHANNELS:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            outputs.append(os.open(entry.path / name, flags, 0o600))
            opened.append(outputs[-1])
        deadline = entry.deadline
        # The script is one argv element of the shell: never interpolated.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            str(SUPERVISOR),
            str(directory),
            str(lock),
            "-" if deadline is None else repr(deadline),
            shell,
            script,
            cwd=str(cwd),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=outputs[0],
            stderr=outputs[1],
            start_new_session=True,
            pass_fds=(directory, lock),
        )
    finally:
        for fd in opened:
            os.close(fd)  # the supervisor has its own copies: the lock is its now


class Output:
    """Reads an entry's output files as they grow and hands the text on, per channel."""

    def __init__(self, entry: Entry):
        self.entry = entry
        self._files: dict[str, int] = {}
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in CHANNELS
        }

    def pump(self, on_output: OutputHandler, final: bool = False) -> None:
        """Everything written since the last pump (with ``final``: and a cut-off character)."""
        for name in CHANNELS:
            fd = self._files.get(name)
            if fd is None:
                try:
                    fd = self._files[name] = os.open(self.entry.path / name, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            while chunk := os.read(fd, 65536):
                text = self._decoders[name].decode(chunk)
                if text:
                    on_output(name, text)
            if final and (rest := self._decoders[name].decode(b"", final=True)):
                on_output(name, rest)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None if there is no such process."""
    identity = spawning.identify(pid)
    return None if identity is None else identity.start_time


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep did: the command ids whose process groups it killed, entries it removed."""

    killed: tuple[str, ...] = ()
    pruned: int = 0


def sweep(
    data_dir: Path,
    keep: Callable[[str], bool],
    *,
    retention: float = RETENTION,
    now: Callable[[], float] = time.time,
) -> Swept:
    """Kill the commands of every run ``keep`` does not name; prune old entries of those runs.

    Call it once when the reconciler starts, before any run executes. ``keep(run)`` gets
    what precedes the first ``:`` of the command ids (for the engine: the lineage) and
    says whether a run of it may still ask for its commands -- running in another live
    process, waiting, or interrupted and about to be resumed. Entries of kept runs are
    left alone, running or not; a command still running for any other run is killed,
    with its whole process group, and recorded as ``killed``; ended entries older than
    ``retention`` seconds go.
    """
    root = journal_dir(data_dir)
    killed: list[str] = []
    pruned = 0
    if not root.is_dir():
        return Swept()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if keep(_run_name(folder)):
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            entry = Entry(path)
            if _stop(entry, "its run was not resumed when the reconciler restarted"):
                killed.append(entry.command_id)
            elif entry.age(now()) > retention:
                shutil.rmtree(path, ignore_errors=True)
                pruned += 1
        if not any(p.is_dir() for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return Swept(tuple(killed), pruned)


def abandon(data_dir: Path, run: str, why: str = "its run was replaced") -> tuple[str, ...]:
    """Kill every command of ``run`` still running (with its process group); their ids."""
    folder = journal_dir(data_dir) / _folder_name(run)
    if not folder.is_dir():
        return ()
    return tuple(
        entry.command_id
        for entry in (Entry(p) for p in sorted(folder.iterdir()) if p.is_dir())
        if _stop(entry, why)
    )


def _stop(entry: Entry, why: str) -> bool:
    """Kill ``entry``'s command if it runs (or left processes behind); record it. Whether it did."""
    state = entry.state()
    if state is State.RUNNING:
        entry.kill()
        entry.end(Outcome.KILLED, f"killed: {why}")
        return True
    if state is State.LOST:
        entry.kill()  # what is left of its group
        entry.end(Outcome.LOST, LOST_DETAIL)
        return True
    return False


LOST_DETAIL = (
    "lost: the step's process ended without recording how (it was killed, or the host "
    "restarted); it is not run again"
)


def _folder_name(run: str) -> str:
    """A run's folder: its own name when that is a plain file name, else a digest of it."""
    return run if _PLAIN_NAME.fullmatch(run) else "~" + hashlib.sha256(run.encode()).hexdigest()


def _run_name(folder: Path) -> str:
    try:
        return (folder / _RUN).read_text(encoding="utf-8")
    except OSError:
        return folder.name


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
