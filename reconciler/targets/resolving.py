"""An environment's targets resolved to ``TargetRef``s, and the executor for each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.errors import PermanentError
from reconciler.gitops import model
from reconciler.targets.commands import Executor, TargetRef
from reconciler.targets.local import LocalExecutor


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


class Executors:
    """Picks the executor for a target: local subprocesses or agents through the hub."""

    def __init__(
        self,
        local: Executor | None = None,
        agents: Executor | None = None,
        *,
        data_dir: Path | None = None,
    ):
        """Without ``local``, a ``LocalExecutor`` journalling its commands under ``data_dir``
        (the reconciler's; without one they are not found again after a restart)."""
        self.local = local or LocalExecutor(data_dir=data_dir)
        self.agents = agents

    def sweep(self, keep: Callable[[str], bool]) -> tuple[str, ...]:
        """Kill local commands left running for runs ``keep`` does not name; their ids.

        Commands on agents need no sweep: an agent's journal answers a re-issued command
        id with its recorded result, and the hub cancels what no run asks for.
        """
        local = self.local
        return local.sweep(keep).killed if isinstance(local, LocalExecutor) else ()

    def abandon(self, run: str) -> tuple[str, ...]:
        """Kill local commands still running for ``run`` (replaced, never resumed)."""
        local = self.local
        return local.abandon(run) if isinstance(local, LocalExecutor) else ()

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
