"""Run engine steps on agents through the QUIC hub, and the embedded local agent.

``HubExecutor`` is the executor for agent targets: every command of a run goes over
the agent's one QUIC connection with an id unique to that execution, and its output
streams back live.  Each command says what it is for (``deploy_type``): the fixed
programs of the container and git_pull drivers are ``container`` and ``git_pull``, any
other script -- written in the config repo -- is ``script``; an agent may accept only some.
Its directory travels as ``cwd`` (relative: inside the agent's work root), which the
agent checks and creates.  A command whose agent was lost mid-run ends ``lost`` (its fate
unknown); ``settle`` collects how it really ended once the agent is back.  ``LocalAgent``
starts a hub on loopback and an agent in the same event loop, so ``--local-agent`` runs
local targets over the real path instead of a shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path

from agent import executing
from agent.client import AgentClient, AgentSettings
from agent.protocol import ExecRequest, ExecResult
from reconciler.drivers import container, git_pull
from reconciler.errors import AgentLost, TemporaryError
from reconciler.hub import locations
from reconciler.hub.server import Hub
from reconciler.targets.commands import CommandResult, OutputHandler, TargetRef
from reconciler.targets.resolving import Executors

LOCAL_AGENT = "local"
# The drivers' fixed programs (config values reach them only as environment variables).
_FIXED_PROGRAMS = {
    git_pull.FETCH: "git_pull",
    container.DEPLOY: "container",
    container.INSPECT: "container",
    container.REMOVE: "container",
    container.RESTART_PREVIOUS: "container",
}


def deploy_type_of(script: str) -> str:
    """What ``script`` is for: a driver's fixed program, or shell from the config repo."""
    return _FIXED_PROGRAMS.get(script, "script")


class HubExecutor:
    """Runs commands on agents via the hub; local targets go to the embedded agent when asked."""

    def __init__(self, hub: Hub, local_agent: str | None = None):
        self.hub = hub
        self.local_agent = local_agent

    def agent_for(self, target: TargetRef) -> str:
        return self.local_agent if target.kind == "local" and self.local_agent else target.name

    def _is_local(self, target: TargetRef) -> bool:
        return target.kind == "local" and self.local_agent is not None

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
        directory = cwd or target.work_dir or None
        if directory and self._is_local(target):
            # The embedded agent shares this process's working directory, and a local
            # target's directory means what it means to the local executor.
            directory = str(Path(directory).absolute())
        request = ExecRequest(
            # The engine names every command (RunContext.command_id): retries and checks
            # get names of their own, and a resumed run re-issues an in-flight command
            # under its old name, so the agent's journal hands back its result (or the
            # running process) instead of running it twice.
            command_id=command_id,
            script=script,
            env=dict(env),
            # The agent creates it (it may not exist yet) after checking it is inside its
            # work root; the path is never interpreted by a shell.
            cwd=directory,
            timeout=timeout,
            deploy_type=deploy_type_of(script),
        )
        try:
            result = await self.hub.execute(
                self.agent_for(target),
                request,
                lambda stream, data: on_output(stream, data.decode("utf-8", "replace")),
            )
        except AgentLost as exc:
            # Lost mid-command past the reconnect grace: the step fails, but whether the
            # command still runs is unknown until the agent reports back (``settle``).
            return CommandResult(exit_code=None, duration=0.0, error=str(exc), lost=True)
        except TemporaryError as exc:
            # Not connected: the step fails with the reason; the strategy decides the rest.
            return CommandResult(exit_code=None, duration=0.0, error=str(exc))
        return self._result(result)

    async def settle(self, target: TargetRef, command_id: str, timeout: float) -> CommandResult:
        """How the lost ``command_id`` ended, once its agent is back and reports it."""
        try:
            result = await self.hub.collect(self.agent_for(target), command_id, timeout)
        except TemporaryError as exc:  # not back in time, the hub stopped, a revoked token
            return CommandResult(exit_code=None, duration=0.0, error=str(exc), lost=True)
        return self._result(result)

    @staticmethod
    def _result(result: ExecResult) -> CommandResult:
        return CommandResult(
            exit_code=result.exit_code,
            duration=result.duration,
            timed_out=result.timed_out,
            cancelled=result.cancelled,
            signal=result.signal,
            error=result.error or "",
        )


class LocalAgent:
    """A hub on loopback plus one agent in this process: the embedded demo's real QUIC path."""

    def __init__(
        self, data_dir: Path, hub: Hub | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.data_dir = Path(data_dir)
        self.hub = hub or Hub(
            locations.hub_dir(self.data_dir), host=host, port=port, heartbeat_interval=5.0
        )
        self._owns_hub = hub is None
        self._client: AgentClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._owns_hub:
            await self.hub.start()
        assert self.hub.tokens is not None and self.hub.identity is not None
        with contextlib.suppress(Exception):
            self.hub.tokens.revoke(LOCAL_AGENT)  # a fresh token each start; the old one is void
        settings = AgentSettings(
            host="127.0.0.1",
            port=self.hub.port,
            name=LOCAL_AGENT,
            token=self.hub.tokens.create(LOCAL_AGENT),
            work_dir=self.data_dir / "agent",
            labels={"local": "true"},
            pin_sha256=self.hub.identity.fingerprint(),
            heartbeat=5.0,
        )
        # The embedded agent is this process: it is confined to nothing the reconciler
        # could not touch itself, and runs local targets wherever they are.
        executor = executing.Executor(settings.work_dir, work_root=Path("/"))
        self._client = AgentClient(settings, executor=executor)
        self._task = asyncio.ensure_future(self._client.run())
        await self.hub.wait_for_agents([LOCAL_AGENT], timeout=15)

    def executors(self) -> Executors:
        executor = HubExecutor(self.hub, LOCAL_AGENT)
        return Executors(local=executor, agents=executor)

    async def stop(self) -> None:
        if self._client is not None:
            self._client.request_shutdown()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        if self._owns_hub:
            await self.hub.stop()
