"""Targets of an environment, resolved to places where commands run.

An environment names targets as ``local: NAME`` (a directory on the reconciler's own
host — the demo and tests), ``agent: NAME`` or ``selector: {labels}`` (hosts running
``quicflow agent``). Each resolved ``TargetRef`` comes with an ``Executor``: the one
way the engine runs a command there. Local targets run subprocesses; agent targets go
through the QUIC hub when it is present.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.errors import PermanentError
from reconciler.gitops import model

OutputHandler = Callable[[str, str], None]  # (channel, text chunk)


@dataclass(frozen=True, slots=True)
class TargetRef:
    """One concrete target of a run."""

    name: str
    kind: str  # local | agent
    address: str = "127.0.0.1"
    port: int | None = None
    work_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int | None
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    signal: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled


class Executor(Protocol):
    """Runs a command on one target, streaming its output."""

    async def run(
        self,
        target: TargetRef,
        command_id: str,
        script: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_output: OutputHandler,
        cwd: str | None = None,
    ) -> CommandResult: ...


def resolve(env: model.Environment, desired: model.DesiredState, data_dir: Path) -> list[TargetRef]:
    """The concrete targets of an environment, in declaration order, without duplicates."""
    found: dict[str, TargetRef] = {}
    for t in env.targets:
        if t.local:
            work = data_dir / "targets" / env.project / env.name / t.local
            found.setdefault(
                t.local, TargetRef(t.local, "local", t.address or "127.0.0.1", t.port, str(work))
            )
        elif t.agent:
            agent = desired.agents.get(t.agent)
            found.setdefault(t.agent, _agent_ref(t.agent, agent, t, env))
        else:
            for name, agent in sorted(desired.agents.items()):
                if all(agent.labels.get(k) == v for k, v in t.selector.items()):
                    found.setdefault(name, _agent_ref(name, agent, t, env))
    return list(found.values())


def _agent_ref(
    name: str, agent: model.Agent | None, t: model.Target, env: model.Environment
) -> TargetRef:
    address = t.address or (agent.address if agent else None) or name
    work = f"quicflow/{env.project}/{env.name}"
    return TargetRef(name, "agent", address, t.port, work, dict(agent.labels) if agent else {})


class LocalExecutor:
    """Runs commands as local subprocesses in the target's work directory."""

    def __init__(self, shell: str = "/bin/sh"):
        self.shell = shell

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
        workdir = Path(cwd or target.work_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # The script is passed as one argv element to the shell: never interpolated.
        proc = await asyncio.create_subprocess_exec(
            self.shell,
            "-c",
            script,
            cwd=str(workdir),
            env={**_base_env(), **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", on_output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", on_output)),
        ]
        timed_out = cancelled = False
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        except asyncio.CancelledError:
            cancelled = True
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        finally:
            await asyncio.gather(*pumps, return_exceptions=True)
        code = proc.returncode
        return CommandResult(
            exit_code=None if timed_out else code,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            signal=-code if code is not None and code < 0 else None,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, channel: str, on_output: OutputHandler) -> None:
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        on_output(channel, chunk.decode("utf-8", "replace"))


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}


class Executors:
    """Picks the executor for a target: local subprocesses or agents through the hub."""

    def __init__(self, local: Executor | None = None, agents: Executor | None = None):
        self.local = local or LocalExecutor()
        self.agents = agents

    def for_target(self, target: TargetRef) -> Executor:
        if target.kind == "local":
            return self.local
        if self.agents is None:
            raise PermanentError(
                f"target {target.name!r} is an agent, and no QUIC hub runs in this process "
                "(use 'quicflow serve', or --local-agent)"
            )
        return self.agents


def names(targets: Sequence[TargetRef]) -> list[str]:
    return [t.name for t in targets]
