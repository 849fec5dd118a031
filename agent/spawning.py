"""Starting a step's process cheaply and noticing its exit without threads or signals.

``StepProcess.start`` runs ``subprocess.Popen`` (vfork, no shell, a new session) and
watches the child through a pidfd on the event loop; stdout and stderr are read through
``loop.connect_read_pipe``.  That costs the same as ``asyncio.create_subprocess_exec``
under the default loop, and works the same under uvloop -- whose own spawning forks the
whole agent and cost about three times as much per step, children included, when
measured (``tests/benchmarks/bench_quic_fanout.py``).  Without pidfds (Linux before 5.3,
other systems) it falls back to ``asyncio.create_subprocess_exec``.

A step's process is also *identified* the moment it exists (``ProcessIdentity``: pid,
session, group and the start time of ``/proc/PID/stat``), so that an agent restarted
after a crash can find what survived of its steps -- and never mistake a recycled pid for
one of them (``identify``, ``processes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _pidfd_works() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


PIDFD = _pidfd_works()
# How long a program found on PATH is trusted to stay where it was found.
RESOLVE_TTL = 10.0
_resolved: dict[tuple[str, str], tuple[float, str]] = {}


def resolve(program: str, env: Mapping[str, str]) -> str | None:
    """Where ``program`` is on the step's PATH, remembered for ``RESOLVE_TTL`` s.

    ``subprocess`` searches PATH inside the child, between vfork and exec, while the agent
    waits: each directory before the right one is a failed ``execve`` (0.2 ms per spawn of
    ``true`` with this machine's 13-entry PATH).  None: let ``subprocess`` search (and
    report a missing program as it always does).
    """
    if "/" in program:
        return None
    path = env.get("PATH", os.defpath)
    key = (program, path)
    now = time.monotonic()
    hit = _resolved.get(key)
    if hit is not None and now - hit[0] < RESOLVE_TTL:
        return hit[1]
    found = shutil.which(program, path=path)
    if found is None:
        _resolved.pop(key, None)
        return None
    if len(_resolved) > 256:
        _resolved.clear()
    _resolved[key] = (now, found)
    return found


PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process as ``/proc/PID/stat`` shows it: enough to find it again, never a recycled pid.

    ``start_time`` is field 22, clock ticks since boot: a later process that gets the same
    pid has a later start time.  It only means something within one boot (``boot_id``).
    """

    pid: int
    session: int
    group: int
    start_time: int
    state: str
    name: str
    # User plus system CPU time so far, in clock ticks (fields 14 and 15); not part of
    # the identity, so two looks at one process compare equal.
    cpu_ticks: int = field(default=0, compare=False)

    @property
    def alive(self) -> bool:
        """False for a zombie: it has exited and holds nothing but its pid."""
        return self.state not in ("Z", "X")

    def is_same_process(self, other: ProcessIdentity) -> bool:
        """True when ``other`` is this very process (same pid and start time)."""
        return self.pid == other.pid and self.start_time == other.start_time


def parse_stat(text: str) -> ProcessIdentity:
    """A ``ProcessIdentity`` from the text of ``/proc/PID/stat`` (ValueError if malformed)."""
    # The command name is in parentheses and may itself contain spaces and parentheses.
    opening, closing = text.index("("), text.rindex(")")
    fields = text[closing + 2 :].split()
    # fields[0] is field 3 (state): the pgrp is field 5, the session 6, utime and stime
    # 14 and 15, the start time 22.
    return ProcessIdentity(
        pid=int(text[:opening]),
        session=int(fields[3]),
        group=int(fields[2]),
        start_time=int(fields[19]),
        state=fields[0],
        name=text[opening + 1 : closing],
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of process ``pid`` (a zombie included), None if there is none."""
    try:
        # os-level: called for every step the agent spawns, where pathlib's text I/O
        # showed up in profiles (~7% of an agent's CPU in a fan-out of `true`).
        descriptor = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(descriptor, 4096).decode("utf-8", "replace")
        finally:
            os.close(descriptor)
        return parse_stat(text)
    except (OSError, ValueError, IndexError):
        return None


def processes() -> list[ProcessIdentity]:
    """Every process on this host (zombies included), as far as ``/proc`` shows them."""
    found = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit() and (identity := identify(int(entry.name))) is not None:
            found.append(identity)
    return found


@functools.cache
def boot_id() -> str:
    """This boot's random id: start times of another boot mean nothing in this one."""
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


class StepProcess:
    """A running step: its pid, its output as stream readers, and its exit status."""

    def __init__(
        self,
        pid: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        exited: asyncio.Future[int],
        stdin: Any = None,
    ) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self._exited = exited
        self._stdin = stdin

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while it runs."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Wait for the process to exit; return its exit code."""
        return await asyncio.shield(self._exited)

    async def feed(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin, then close it (a closed pipe is ignored)."""
        stdin = self._stdin
        if stdin is None:
            return
        if isinstance(stdin, asyncio.StreamWriter):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.write(data)
                await stdin.drain()
                stdin.close()
            return
        # A pipe transport: it writes what it buffered, then closes the pipe.
        stdin.write(data)
        stdin.close()

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        with_stdin: bool,
        on_spawn: Callable[[ProcessIdentity], None] | None = None,
    ) -> StepProcess:
        """Start ``argv`` in its own session with piped output (and stdin if asked).

        ``on_spawn`` gets the new process's identity as soon as it exists, before anything
        is awaited: an agent killed right after the spawn has already journalled it.
        """
        if not PIDFD:
            return await cls._start_with_asyncio(
                argv, cwd=cwd, env=env, with_stdin=with_stdin, on_spawn=on_spawn
            )
        loop = asyncio.get_running_loop()
        executable = resolve(argv[0], env)
        try:
            popen = cls._popen(argv, executable, cwd, env, with_stdin)
        except FileNotFoundError:
            if executable is None:
                raise
            # Moved or removed since it was found: search again.
            _resolved.pop((argv[0], env.get("PATH", os.defpath)), None)
            popen = cls._popen(argv, None, cwd, env, with_stdin)
        # Not reaped before the first await: the zombie of a quick step still identifies.
        if on_spawn is not None and (identity := identify(popen.pid)) is not None:
            on_spawn(identity)
        exited: asyncio.Future[int] = loop.create_future()
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:
            # Cannot watch it: do not leave it running unwatched.
            popen.kill()
            popen.wait()
            for pipe in (popen.stdin, popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            raise

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # The child is a zombie now: poll() reaps it and decodes the status.
            code = popen.poll()
            if not exited.done():
                exited.set_result(popen.returncode if code is None else code)

        loop.add_reader(pidfd, reap)
        assert popen.stdout is not None and popen.stderr is not None
        stdout = asyncio.StreamReader(loop=loop)
        stderr = asyncio.StreamReader(loop=loop)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), popen.stdout)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stderr), popen.stderr)
            stdin = None
            if popen.stdin is not None:
                stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, popen.stdin)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            raise
        return cls(popen.pid, stdout, stderr, exited, stdin)

    @staticmethod
    def _popen(
        argv: Sequence[str],
        executable: str | None,
        cwd: str,
        env: Mapping[str, str],
        with_stdin: bool,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            executable=executable,
            stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            bufsize=0,
        )

    @classmethod
    async def _start_with_asyncio(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        with_stdin: bool,
        on_spawn: Callable[[ProcessIdentity], None] | None,
    ) -> StepProcess:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        if on_spawn is not None and (identity := identify(process.pid)) is not None:
            on_spawn(identity)
        exited = asyncio.ensure_future(process.wait())
        return cls(process.pid, process.stdout, process.stderr, exited, process.stdin)
