"""Running commands on the agent: processes, streamed output with flow control, stored results.

An ``Execution`` is one command id.  It runs its steps (``spawning.StepProcess``: vfork,
exit seen through a pidfd) in a new session (so cancel and timeout reach the whole
process group), reads stdout and stderr in chunks of at most ``protocol.MAX_CHUNK`` bytes
and hands each chunk, already encoded as an OUTPUT frame, to whatever stream is attached.
Chunks stay in memory until the hub acknowledges them; when ``WINDOW`` bytes are
unacknowledged the readers stop reading, the pipe fills and the process blocks -- so output
is never buffered whole, and while the connection is down the command simply pauses at the
window.  After a reconnect the hub re-attaches with the next seq it expects and the chunks
it missed are replayed.

The ``Executor`` keeps executions by command id and the ``ResultStore`` keeps results (and
a "started" marker) on disk, so a repeated id returns the stored result instead of running
again -- even after the agent restarted.  It knows nothing of QUIC: the client gives it a
``send(frame, end_stream)`` callable per stream.

A crashed agent leaves orphans: its steps run in sessions of their own and outlive it.  So
the journal also records each step process as it starts (pid, session, start time, boot),
and a restarted agent, before it says HELLO to any hub, settles every command an earlier
agent process started and never finished (``Executor.recover``): what survives of it is
killed (SIGTERM to the session, ``KILL_GRACE``, SIGKILL, confirmed gone) and the command
gets a result saying so.  The hub's re-attach then learns the step is dead, not merely
unknown, and a rollback cannot race it.  Adopting a survivor instead is not possible: its
output went to the dead agent's pipes, so nothing could be streamed or waited for.

What the hub may ask is confined (``Confinement``): every step runs in a directory inside
the agent's work root (a relative ``cwd`` or git directory is taken inside it, one that
resolves outside it -- also through a symlink -- is refused), the command's deploy type
must be one the agent accepts, and with ``pass_env`` a step sees only those variables of
the agent's own environment plus the ones the hub sent.  A refusal is an ordinary result
with an ``error`` starting "refused:", so the run that asked says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import git_pulling, protocol, spawning

logger = logging.getLogger(__name__)

Send = Callable[[bytes, bool], None]

WINDOW = 1 << 20
KILL_GRACE = 3.0
# How long a finished command whose EXIT was never acknowledged stays in memory (its result
# stays on disk regardless).
FORGET_AFTER = 600.0
RESULT_RETENTION = 7 * 24 * 3600.0
JOURNAL = "journal.jsonl"
# What a step inherits of the agent's own environment when the agent runs as a service
# (``quicflow agent`` passes these; ``--pass-env`` adds more).  Everything else -- the
# agent's token among it -- stays out of deploy scripts.
PASS_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


class Refused(ValueError):
    """The agent will not run this command here; the message says why."""


@dataclass(frozen=True, slots=True)
class Confinement:
    """Where steps may run and which deploy types the agent accepts (None: every type).

    Relative directories are taken inside ``base`` (the work dir), which is inside
    ``work_root``; for an agent on a host the two are the same directory.
    """

    work_root: Path
    base: Path
    deploy_types: frozenset[str] | None = None

    @classmethod
    def create(
        cls,
        work_root: Path,
        deploy_types: Collection[str] | None = None,
        base: Path | None = None,
    ) -> Confinement:
        """A confinement to ``work_root`` (made absolute, symlinks resolved)."""
        allowed = None if deploy_types is None else frozenset(deploy_types)
        root = Path(os.path.realpath(work_root))
        inside = root if base is None else Path(os.path.realpath(base))
        if inside != root and root not in inside.parents:
            raise ValueError(f"the work dir {inside} is not inside the work root {root}")
        return cls(root, inside, allowed)

    def check_type(self, request: protocol.Request) -> None:
        """Raise ``Refused`` unless the request's deploy type is accepted."""
        kind = "git_pull" if isinstance(request, protocol.GitPullRequest) else request.deploy_type
        if self.deploy_types is not None and kind not in self.deploy_types:
            accepted = ", ".join(sorted(self.deploy_types)) or "none"
            raise Refused(
                f"refused: this agent does not accept {kind!r} commands (it accepts: {accepted};"
                " see --allow-deploy-types)"
            )
        restart = isinstance(request, protocol.GitPullRequest) and request.restart_script
        if restart and self.deploy_types is not None and "script" not in self.deploy_types:
            # The restart script is shell from the config repo, whatever carries it.
            raise Refused(
                "refused: a git_pull restart script is a 'script' command, which this agent"
                " does not accept (see --allow-deploy-types)"
            )

    def directory(self, value: str | None, what: str) -> Path:
        """``value`` (relative: inside the work root) as a path inside the work root, created."""
        if not value:
            # The work dir itself, resolved when the agent started: no path from the
            # config repo to check (most commands; resolving costs a syscall per part).
            resolved = self.base
        else:
            path = Path(value)
            if not path.is_absolute():
                path = self.base / path
            resolved = Path(os.path.realpath(path))
            if resolved != self.work_root and self.work_root not in resolved.parents:
                raise Refused(
                    f"refused: {what} {value!r} is outside this agent's work root {self.work_root}"
                )
        try:
            if not resolved.is_dir():
                resolved.mkdir(parents=True, exist_ok=True)
        except OSError as failure:
            raise ValueError(
                f"cannot start: {what} {value!r}: {failure.strerror or failure}"
            ) from None
        return resolved


def step_environment(
    own: dict[str, str], pass_env: Sequence[str] | None, request_env: dict[str, str]
) -> dict[str, str]:
    """What a step sees: the passed part of the agent's environment, then the hub's values."""
    if pass_env is None:
        base = dict(own)
    else:
        exact = {name for name in pass_env if not name.endswith("*")}
        prefixes = tuple(name[:-1] for name in pass_env if name.endswith("*"))
        base = {
            name: value
            for name, value in own.items()
            if name in exact or (prefixes and name.startswith(prefixes))
        }
    return {**base, **request_env}


@dataclass(frozen=True, slots=True)
class JournaledProcess:
    """A step process of a command, as the journal remembers it."""

    pid: int
    session: int
    group: int
    start_time: int  # clock ticks since boot (/proc/PID/stat field 22)
    name: str
    boot: str
    agent: tuple[int, int]  # (pid, start time) of the agent process that started it

    def to_record(self) -> dict[str, object]:
        """The journal fields of this process."""
        return {
            "pid": self.pid,
            "sid": self.session,
            "pgid": self.group,
            "start": self.start_time,
            "name": self.name,
            "boot": self.boot,
            "agent": list(self.agent),
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> JournaledProcess:
        """The process a journal record describes (KeyError, TypeError, ValueError if not)."""
        agent = record["agent"]
        if not isinstance(agent, list) or len(agent) != 2:
            raise ValueError(f"not an agent (pid, start time): {agent!r}")
        return cls(
            int(str(record["pid"])),
            int(str(record["sid"])),
            int(str(record["pgid"])),
            int(str(record["start"])),
            str(record["name"]),
            str(record["boot"]),
            (int(agent[0]), int(agent[1])),
        )


def survivors(
    step: JournaledProcess, everything: Sequence[spawning.ProcessIdentity], boot: str
) -> list[spawning.ProcessIdentity]:
    """The live processes left of ``step``'s session, from a scan of ``everything``.

    A session id stays reserved while any process of the session lives, so if the step's
    pid now belongs to a process with another start time, nothing of the session is left.
    Every process the step started began no earlier than the step did.
    """
    if step.boot and boot and step.boot != boot:
        return []  # the host rebooted: nothing survived
    for process in everything:
        if process.pid == step.pid and process.start_time != step.start_time:
            return []  # the pid was recycled
    return [
        process
        for process in everything
        if process.alive
        and process.session == step.session
        and process.start_time >= step.start_time
    ]


class ResultStore:
    """Results, "started" marks and step processes of command ids, in an append-only journal.

    One ``write`` per event and no file creation on the hot path: a fan-out to many agents
    must not wait on the filesystem.  The journal is read back (and compacted, dropping
    records older than ``retention``) when the store opens; a torn last line from a crash
    is skipped.  The processes of a command are kept until its result is saved.
    """

    def __init__(self, directory: Path, retention: float = RESULT_RETENTION) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / JOURNAL
        # command id -> (time, result or None while only started)
        self._records: dict[str, tuple[float, protocol.ExecResult | None]] = {}
        # command id -> the step processes it started, while it has no result
        self._processes: dict[str, list[JournaledProcess]] = {}
        me = spawning.identify(os.getpid())
        self._owner = (os.getpid(), me.start_time if me is not None else 0)
        self._load(time.time() - retention)
        self._compact()
        self._journal = self.path.open("a", encoding="utf-8")
        self._appended = 0

    def mark_started(self, command_id: str) -> None:
        """Record that ``command_id`` has started (before its process is spawned)."""
        now = time.time()
        self._records[command_id] = (now, None)
        self._append({"t": now, "id": command_id})

    def mark_process(self, command_id: str, process: spawning.ProcessIdentity) -> None:
        """Record a step process ``command_id`` has just started, so a restart can find it."""
        journaled = JournaledProcess(
            process.pid,
            process.session,
            process.group,
            process.start_time,
            process.name,
            spawning.boot_id(),
            self._owner,
        )
        self._processes.setdefault(command_id, []).append(journaled)
        self._append({"t": time.time(), "id": command_id, **journaled.to_record()})

    def was_started(self, command_id: str) -> bool:
        """True when some agent process started ``command_id`` on this host."""
        return command_id in self._records

    def unfinished(self) -> dict[str, list[JournaledProcess]]:
        """Commands started without a result, with the step processes they started."""
        return {
            command_id: list(self._processes.get(command_id, ()))
            for command_id, (_, result) in self._records.items()
            if result is None
        }

    @property
    def owner(self) -> tuple[int, int]:
        """(pid, start time) of this agent process, as its process records name it."""
        return self._owner

    def save(self, result: protocol.ExecResult) -> None:
        """Record the result of a command."""
        now = time.time()
        self._records[result.command_id] = (now, result)
        self._processes.pop(result.command_id, None)
        self._append({"t": now, "id": result.command_id, "result": protocol.result_to_meta(result)})

    def load(self, command_id: str) -> protocol.ExecResult | None:
        """The stored result of ``command_id``, if it finished."""
        record = self._records.get(command_id)
        return None if record is None else record[1]

    def close(self) -> None:
        """Close the journal file."""
        self._journal.close()

    def _append(self, record: dict[str, object]) -> None:
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._journal.flush()
        self._appended += 1
        if self._appended > 2 * len(self._records) + 10_000:
            self._journal.close()
            self._compact()
            self._journal = self.path.open("a", encoding="utf-8")
            self._appended = 0

    def _load(self, horizon: float) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                record = json.loads(line)
                moment, command_id = float(record["t"]), str(record["id"])
                if "pid" in record:
                    process = JournaledProcess.from_record(record)
                    known = self._records.get(command_id)
                    if known is not None and known[1] is None:
                        self._processes.setdefault(command_id, []).append(process)
                    continue
                result = record.get("result")
                value = protocol.result_from_meta(result) if result else None
            except (ValueError, KeyError, TypeError, protocol.ProtocolError):
                continue  # a torn line from a crash mid-write
            if moment >= horizon:
                self._records[command_id] = (moment, value)
                if value is not None:
                    self._processes.pop(command_id, None)

    def _compact(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for command_id, (moment, result) in self._records.items():
                record: dict[str, object] = {"t": moment, "id": command_id}
                if result is not None:
                    record["result"] = protocol.result_to_meta(result)
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                for process in self._processes.get(command_id, ()):
                    line = {"t": moment, "id": command_id, **process.to_record()}
                    handle.write(json.dumps(line, separators=(",", ":")) + "\n")
        os.replace(temporary, self.path)


def _is_running(pid: int, start_time: int) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` is still alive."""
    process = spawning.identify(pid)
    return process is not None and process.alive and process.start_time == start_time


class OrphanSweep:
    """Kills what survives of some commands' step processes (``Executor.recover``)."""

    def __init__(self, unfinished: dict[str, list[JournaledProcess]]) -> None:
        self.unfinished = unfinished
        self.boot = spawning.boot_id()
        # Every survivor found by any scan, and those alive at the last scan, by command.
        self.seen: dict[str, dict[int, spawning.ProcessIdentity]] = {c: {} for c in unfinished}
        self.alive = self._scan()
        # pid -> why it could not be signalled
        self.refused: dict[int, str] = {}

    async def kill(self, grace: float) -> None:
        """SIGTERM every survivor, SIGKILL what is left after ``grace`` s, confirm it is gone."""
        if not self._any_alive():
            return
        self._send(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._any_alive() and loop.time() < deadline:
            await asyncio.sleep(0.02)
            self.alive = self._scan()
        # Again after every scan, as a survivor may have forked meanwhile, until nothing is
        # left or it is clear that something cannot be killed.
        deadline = loop.time() + max(grace, 1.0)
        while self._any_alive():
            self._send(signal.SIGKILL)
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.02)
            self.alive = self._scan()

    def _any_alive(self) -> bool:
        return any(self.alive.values())

    def _scan(self) -> dict[str, dict[int, spawning.ProcessIdentity]]:
        everything = spawning.processes()
        alive = {
            command_id: {
                found.pid: found
                for process in journaled
                for found in survivors(process, everything, self.boot)
            }
            for command_id, journaled in self.unfinished.items()
        }
        for command_id, processes in alive.items():
            self.seen[command_id].update(processes)
        return alive

    def _send(self, signal_number: int) -> None:
        for processes in self.alive.values():
            for process in processes.values():
                now = spawning.identify(process.pid)
                if now is None or not now.is_same_process(process) or not now.alive:
                    continue  # gone (its pid may already be someone else's)
                try:
                    os.kill(process.pid, signal_number)
                except ProcessLookupError:
                    pass
                except PermissionError as failure:
                    self.refused[process.pid] = failure.strerror or "permission denied"


def install_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """On Python 3.11, watch child processes with pidfds instead of a thread per process."""
    # Python 3.12+ does this by default and deprecates child watchers.
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel before 5.3: keep the default
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)


class Execution:
    """One command: its steps, its output window, the attached stream and its result."""

    def __init__(
        self,
        request: protocol.Request,
        steps: list[git_pulling.Step],
        env: dict[str, str],
        cwd: str,
        store: ResultStore,
        window: int = WINDOW,
    ) -> None:
        self.request = request
        self.command_id = request.command_id
        self.result: protocol.ExecResult | None = None
        self.finished_at: float | None = None
        self._steps = steps
        self._env = env
        self._cwd = cwd
        self._store = store
        self._window = window
        self._send: Send | None = None
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._unacked_bytes = 0
        self._window_open = asyncio.Event()
        self._window_open.set()
        self._next_seq = 0
        self._bytes_read = 0
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- wiring to a stream -------------------------------------------------------------

    def start(self) -> None:
        """Start running in the background."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"command {self.command_id}"
        )

    def attach(self, send: Send, resume_seq: int = 0) -> None:
        """Deliver this command's output from ``resume_seq`` on (and its result) via ``send``."""
        self._send = send
        self.acknowledge(resume_seq - 1)
        for _, frame in self._unacked:
            send(frame, False)
        if self.result is not None:
            send(
                protocol.encode(protocol.FrameKind.EXIT, protocol.result_to_meta(self.result)), True
            )

    def detach(self) -> None:
        """The stream is gone: keep running, keep output until the window is full."""
        self._send = None

    def acknowledge(self, seq: int) -> None:
        """The hub has every chunk up to ``seq``: free them."""
        while self._unacked and self._unacked[0][0] <= seq:
            self._unacked_bytes -= len(self._unacked.popleft()[1])
        if self._unacked_bytes < self._window:
            self._window_open.set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the command: SIGTERM to its process group, SIGKILL after a grace period."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    @property
    def done(self) -> bool:
        """True once the result is known."""
        return self.result is not None

    async def wait(self) -> protocol.ExecResult:
        """Wait for and return the result."""
        await self._done.wait()
        assert self.result is not None
        return self.result

    # --- running ------------------------------------------------------------------------

    async def _run(self) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        timeout = self.request.timeout
        deadline = None if timeout is None else loop.time() + timeout
        exit_code: int | None = 0
        error: str | None = None
        try:
            for step in self._steps:
                if step.announce:
                    await self._emit("stderr", f"+ {step.display()}\n".encode())
                exit_code, error = await self._run_step(step, deadline)
                if exit_code != 0 or error is not None or self._stop_reason is not None:
                    break
        except Exception as failure:  # noqa: BLE001 - the hub must always get a result
            logger.exception("command %s failed inside the agent", self.command_id)
            exit_code, error = None, f"agent error: {failure}"
        signal_number = -exit_code if exit_code is not None and exit_code < 0 else None
        reason = self._stop_reason
        self._finish(
            protocol.ExecResult(
                command_id=self.command_id,
                exit_code=None if signal_number else exit_code,
                signal=signal_number,
                duration=round(time.monotonic() - started, 6),
                timed_out=reason == "timeout",
                cancelled=reason is not None and reason != "timeout",
                error=error
                if error
                else (None if reason in (None, "timeout", "cancelled") else reason),
            )
        )

    async def _run_step(
        self, step: git_pulling.Step, deadline: float | None
    ) -> tuple[int | None, str | None]:
        stdin_data = self.request.stdin if isinstance(self.request, protocol.ExecRequest) else None
        try:
            process = await spawning.StepProcess.start(
                step.argv,
                cwd=step.cwd or self._cwd,
                env=self._env,
                with_stdin=stdin_data is not None,
                on_spawn=functools.partial(self._store.mark_process, self.command_id),
            )
        except OSError as failure:
            return None, f"cannot start {step.argv[0]!r}: {failure.strerror or failure}"
        readers = [
            asyncio.create_task(self._pump(process.stdout, "stdout")),
            asyncio.create_task(self._pump(process.stderr, "stderr")),
        ]
        writer = None
        if stdin_data is not None:
            writer = asyncio.create_task(self._feed(process, stdin_data))
        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(process.wait())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait(
                {waiter, stopper}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not waiter.done():
                if not self._stop.is_set():
                    self._stop_reason = self._stop_reason or "timeout"
                await self._terminate(process, waiter)
            await self._drain(readers)
        finally:
            for task in (*readers, waiter, stopper, *(t for t in [writer] if t)):
                task.cancel()
            await asyncio.gather(
                *readers, waiter, stopper, *(t for t in [writer] if t), return_exceptions=True
            )
        return process.returncode, None

    async def _terminate(self, process: spawning.StepProcess, waiter: asyncio.Task[int]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        await asyncio.wait({waiter}, timeout=KILL_GRACE)
        if not waiter.done():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await waiter

    async def _drain(self, readers: list[asyncio.Task[None]]) -> None:
        # The process has exited, but a daemon it started may still hold the pipes open:
        # keep reading while output flows (or we wait for the hub's window), stop when idle.
        while True:
            before = self._bytes_read
            _, pending = await asyncio.wait(readers, timeout=1.0)
            if not pending:
                return
            blocked_on_window = not self._window_open.is_set()
            if self._stop_reason is not None or (
                self._bytes_read == before and not blocked_on_window
            ):
                return

    async def _pump(self, reader: asyncio.StreamReader, stream: str) -> None:
        while True:
            data = await reader.read(protocol.MAX_CHUNK)
            if not data:
                return
            self._bytes_read += len(data)
            await self._emit(stream, data)

    async def _feed(self, process: spawning.StepProcess, data: bytes) -> None:
        await process.feed(data)

    async def _emit(self, stream: str, data: bytes) -> None:
        # Flow control: wait here (and so stop reading the pipe) while the window is full.
        await self._window_open.wait()
        frame = protocol.encode(
            protocol.FrameKind.OUTPUT, {"seq": self._next_seq, "stream": stream}, data
        )
        self._unacked.append((self._next_seq, frame))
        self._unacked_bytes += len(frame)
        self._next_seq += 1
        if self._unacked_bytes >= self._window:
            self._window_open.clear()
        if self._send is not None:
            self._send(frame, False)

    def _finish(self, result: protocol.ExecResult) -> None:
        self.result = result
        self.finished_at = time.monotonic()
        self._store.save(result)
        if self._send is not None:
            self._send(
                protocol.encode(protocol.FrameKind.EXIT, protocol.result_to_meta(result)), True
            )
        self._done.set()


class Executor:
    """Every command this agent knows, by id; starts, re-attaches, cancels and forgets them."""

    def __init__(
        self,
        work_dir: Path,
        base_env: dict[str, str] | None = None,
        *,
        deploy_types: Collection[str] | None = None,
        pass_env: Sequence[str] | None = None,
        work_root: Path | None = None,
    ) -> None:
        """Run commands inside ``work_dir`` (also the work root unless one is given).

        ``pass_env`` None passes the whole of ``base_env`` (default: this process's
        environment) to steps, as the embedded local agent does; it is the reconciler's
        own process, confined by nothing but a wider ``work_root``.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        self.confinement = Confinement.create(work_root or work_dir, deploy_types, work_dir)
        self.work_dir = self.confinement.base
        self.store = ResultStore(self.work_dir / "results")
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._pass_env = None if pass_env is None else tuple(pass_env)
        self._executions: dict[str, Execution] = {}
        self._accepting = True
        self._recovered = False

    def submit(
        self,
        request: protocol.Request,
        send: Send,
        *,
        resume_seq: int = 0,
        attach_only: bool = False,
        cancel: bool = False,
    ) -> Execution | None:
        """Run ``request`` (or re-attach to it, or answer with its stored result) on ``send``."""
        self._forget_old()
        command_id = request.command_id
        execution = self._executions.get(command_id)
        if execution is not None:
            execution.attach(send, resume_seq)
            if cancel:
                execution.cancel()
            return execution
        stored = self.store.load(command_id)
        if stored is None and self.store.was_started(command_id):
            # Started by an earlier agent process that died: never run it a second time.
            stored = protocol.ExecResult(
                command_id, None, error="interrupted: the agent restarted while the command ran"
            )
            self.store.save(stored)
        if stored is None and (attach_only or cancel or not self._accepting):
            if attach_only:
                why = "unknown command: this agent never started it"
            elif cancel:
                why = "cancelled before it started"
            else:
                why = "agent is shutting down"
            stored = protocol.ExecResult(command_id, None, cancelled=cancel, error=why)
        if stored is not None:
            send(protocol.encode(protocol.FrameKind.EXIT, protocol.result_to_meta(stored)), True)
            return None
        try:
            self.confinement.check_type(request)
            steps, cwd = self._plan(request)
        except ValueError as failure:
            if isinstance(failure, Refused):
                logger.warning("command %s %s", command_id, failure)
            result = protocol.ExecResult(command_id, None, error=str(failure))
            send(protocol.encode(protocol.FrameKind.EXIT, protocol.result_to_meta(result)), True)
            return None
        env = step_environment(self._base_env, self._pass_env, dict(request.env))
        if isinstance(request, protocol.GitPullRequest):
            env.update(git_pulling.ENVIRONMENT)
        execution = Execution(request, steps, env, cwd, self.store)
        self._executions[command_id] = execution
        self.store.mark_started(command_id)
        execution.start()
        execution.attach(send, resume_seq)
        return execution

    async def recover(self, grace: float = KILL_GRACE) -> list[protocol.ExecResult]:
        """Settle the commands an earlier agent process started and never finished (once).

        Call it before connecting to any hub.  What survives of such a command -- its
        step's session, matched by start time -- is sent SIGTERM, then SIGKILL after
        ``grace`` s, and confirmed gone; the command gets a result saying so, never a
        second run.  Killing, not adopting: the survivors' output pipes died with the old
        agent, so they could be neither streamed nor waited for.  A command whose agent
        process still lives (two agents sharing a work dir) is left alone.
        """
        if self._recovered:
            return []
        self._recovered = True
        unfinished = {
            command_id: journaled
            for command_id, journaled in self.store.unfinished().items()
            if command_id not in self._executions
        }
        for command_id, journaled in list(unfinished.items()):
            owners = {process.agent for process in journaled} - {self.store.owner}
            living = [pid for pid, start in owners if _is_running(pid, start)]
            if living:
                logger.warning(
                    "command %s was started by agent process %d, which still runs on this"
                    " work dir: left alone",
                    command_id,
                    living[0],
                )
                del unfinished[command_id]
        if not unfinished:
            return []
        sweep = OrphanSweep(unfinished)
        await sweep.kill(grace)
        return [
            self._interrupted(
                command_id, sweep.seen[command_id], sweep.alive[command_id], sweep.refused
            )
            for command_id in unfinished
        ]

    def _interrupted(
        self,
        command_id: str,
        seen: dict[int, spawning.ProcessIdentity],
        alive: dict[int, spawning.ProcessIdentity],
        refused: dict[int, str],
    ) -> protocol.ExecResult:
        """Journal (and return) the result of a command an agent restart interrupted."""
        killed = sorted(pid for pid in seen if pid not in alive)
        for pid in killed:
            logger.warning(
                "killed orphan pid %d (%s) of command %s: the agent restarted while it ran",
                pid,
                seen[pid].name,
                command_id,
            )
        error = "interrupted: the agent restarted while this ran; "
        if alive:
            stubborn = ", ".join(
                f"{pid} ({refused.get(pid, 'still alive after SIGKILL')})" for pid in sorted(alive)
            )
            logger.error("command %s: orphans could not be killed: %s", command_id, stubborn)
            error += f"its processes {stubborn} could not be killed"
            if killed:
                error += f" (pids {', '.join(map(str, killed))} were)"
        elif killed:
            error += (
                f"its processes (pids {', '.join(map(str, killed))}) were killed before the"
                " agent reconnected"
            )
        else:
            error += "none of its processes were left running"
        result = protocol.ExecResult(command_id, None, error=error)
        self.store.save(result)
        return result

    def acknowledge(self, command_id: str, seq: int | None, exit_received: bool) -> None:
        """Apply an ACK from the hub; forget the command once its EXIT was received."""
        execution = self._executions.get(command_id)
        if execution is None:
            return
        if seq is not None:
            execution.acknowledge(seq)
        if exit_received and execution.done:
            del self._executions[command_id]

    def cancel(self, command_id: str) -> bool:
        """Cancel a running command; return whether it was running."""
        execution = self._executions.get(command_id)
        if execution is None or execution.done:
            return False
        execution.cancel()
        return True

    def detach_all(self) -> None:
        """The connection is gone: commands keep running, output waits in their windows."""
        for execution in self._executions.values():
            execution.detach()

    def running(self) -> list[Execution]:
        """Commands still running."""
        return [e for e in self._executions.values() if not e.done]

    def undelivered(self) -> list[Execution]:
        """Commands whose output or result the hub has not yet acknowledged."""
        return list(self._executions.values())

    async def shutdown(self, grace: float) -> None:
        """Refuse new commands, let running ones finish for ``grace`` s, then cancel them."""
        self._accepting = False
        running = self.running()
        if not running:
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in running]
        _, pending = await asyncio.wait(waiters, timeout=grace)
        for execution in self.running():
            execution.cancel("agent shutting down")
        if pending:
            await asyncio.wait(pending)

    def close(self) -> None:
        """Release the result journal (running commands are not touched)."""
        self.store.close()

    def _plan(self, request: protocol.Request) -> tuple[list[git_pulling.Step], str]:
        if isinstance(request, protocol.GitPullRequest):
            directory = self.confinement.directory(request.directory, "git directory")
            request = dataclasses.replace(request, directory=str(directory))
            return git_pulling.steps(request, self.work_dir), str(self.work_dir)
        if request.argv is not None:
            argv = tuple(request.argv)
        else:
            argv = ("/bin/sh", "-c", str(request.script))
        cwd = self.confinement.directory(request.cwd, "cwd")
        return [git_pulling.Step(argv)], str(cwd)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - FORGET_AFTER
        for command_id, execution in list(self._executions.items()):
            if execution.finished_at is not None and execution.finished_at < horizon:
                del self._executions[command_id]
