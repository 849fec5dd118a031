"""The planner: a pure function of (desired, deployed, live observations) → actions.

It is the heart of ``quicflow plan``, of the reconcile loop and of drift detection, so
it does no I/O and is deterministic: the same inputs give the same plan, in the same
order (project, then environment). Pairing comes first — desired with deployed, by
project/environment — then each pair is judged:

- never deployed       desired, nothing recorded           → deploy
- version changed      recorded version differs             → deploy
- config changed       effective-config hash differs        → deploy
- drift                a live target runs something else    → deploy
- failed before        this exact (version, config) failed  → hold (no crash loops)
- pinned               pinned (rollback --pin, or a webhook/API deploy that could not
                       be committed to Git), Git's version unchanged → hold (a change of
                       configuration alone keeps the pin)
- unchanged            nothing to do                        → none
- orphaned             recorded, no longer declared         → orphan (reported, never torn down)

Planning again after the actions were applied yields nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.gitops import model


class Reason(StrEnum):
    NEVER_DEPLOYED = "never_deployed"
    VERSION_CHANGED = "version_changed"
    CONFIG_CHANGED = "config_changed"
    DRIFT = "drift"
    FAILED_BEFORE = "failed_before"
    PINNED = "pinned"
    UNCHANGED = "unchanged"
    ORPHANED = "orphaned"


class ActionKind(StrEnum):
    DEPLOY = "deploy"
    HOLD = "hold"
    NONE = "none"
    ORPHAN = "orphan"

    @property
    def is_change(self) -> bool:
        return self is ActionKind.DEPLOY


@dataclass(frozen=True, slots=True)
class Attempt:
    """A run that did not end with the desired version in place."""

    version: str
    config_hash: str
    outcome: str
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class Pin:
    """An environment pinned to ``version`` while Git still asks for what it asked then.

    Made by ``rollback --pin`` and by a webhook or API deploy the reconciler could not
    commit to the config repo; ``desired_version``/``desired_hash`` are what Git asked
    for when the pin was made. Only a change of the environment's version in Git
    releases the pin: a configuration change alone (a project variable) keeps it, so the
    version rolled back from is never redeployed by an unrelated commit.
    """

    version: str
    desired_version: str
    desired_hash: str


@dataclass(frozen=True, slots=True)
class DeployedRecord:
    """What the state ref says is deployed in one project/environment.

    ``version`` and ``config_hash`` only ever describe a release that fully succeeded;
    ``last_failure`` and ``pin`` carry what the planner needs to avoid crash loops and
    honour pins; ``color`` is the blue-green color serving that release (None for other
    strategies), so any data dir knows which color it must not deploy onto in place.
    """

    project: str
    env: str
    version: str | None
    config_hash: str = ""
    config_commit: str = ""
    image_digest: str | None = None
    strategy: str = ""
    outcome: str = ""
    run_id: str = ""
    started_at: str = ""
    finished_at: str = ""
    targets: tuple[str, ...] = ()
    last_failure: Attempt | None = None
    pin: Pin | None = None
    color: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.env)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one live target reports running (from agents, Docker or Kubernetes)."""

    project: str
    env: str
    target: str
    version: str | None = None
    image_digest: str | None = None
    # What the observer found different from what was applied (replicas, image,
    # selector) in words; non-empty is drift whatever the version says.
    differs: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    """What to do for one project/environment, and why."""

    project: str
    env: str
    kind: ActionKind
    reason: Reason
    to_version: str | None
    from_version: str | None
    strategy: str = ""
    deploy_type: str = ""
    protected: bool = False
    targets: tuple[str, ...] = ()
    config_hash: str = ""
    detail: str = ""
    pin: Pin | None = None  # the pin a ``pinned`` hold keeps in force

    @property
    def key(self) -> str:
        return f"{self.project}/{self.env}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "environment": self.env,
            "action": self.kind.value,
            "reason": self.reason.value,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "strategy": self.strategy,
            "deploy_type": self.deploy_type,
            "protected": self.protected,
            "targets": list(self.targets),
            "config_hash": self.config_hash,
            "detail": self.detail,
            "pin": None
            if self.pin is None
            else {
                "version": self.pin.version,
                "desired_version": self.pin.desired_version,
                "desired_hash": self.pin.desired_hash,
            },
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered actions for every project/environment."""

    actions: tuple[Action, ...]
    commit: str = ""
    state_commit: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind.is_change)

    @property
    def has_changes(self) -> bool:
        return any(a.kind.is_change for a in self.actions)

    def only(self, project: str, env: str | None = None) -> Plan:
        """The plan restricted to one project (and environment)."""
        kept = tuple(
            a for a in self.actions if a.project == project and (env is None or a.env == env)
        )
        return Plan(kept, self.commit, self.state_commit, _count(kept))


def plan(
    desired: model.DesiredState,
    deployed: Mapping[tuple[str, str], DeployedRecord],
    observations: Iterable[Observation] = (),
    state_commit: str | None = None,
) -> Plan:
    """Pair desired with deployed (and live) state and decide an action for each pair."""
    return Planner().plan(desired, deployed, observations, state_commit)


class Planner:
    """Plans again and again, reusing the judgement of pairs that did not change.

    The loader reuses unchanged ``Environment`` objects and history reuses unchanged
    records, so a pair made of the very same two objects as last time has the same
    action: after a one-file commit only that file's environments are judged again.
    The memo holds the objects it keys by identity, so their ids cannot be reused.
    """

    def __init__(self) -> None:
        self._memo: dict[
            tuple[int, int], tuple[model.Environment, DeployedRecord | None, Action]
        ] = {}

    def plan(
        self,
        desired: model.DesiredState,
        deployed: Mapping[tuple[str, str], DeployedRecord],
        observations: Iterable[Observation] = (),
        state_commit: str | None = None,
    ) -> Plan:
        live: dict[tuple[str, str], list[Observation]] = {}
        for obs in observations:
            live.setdefault((obs.project, obs.env), []).append(obs)
        memo: dict[tuple[int, int], tuple[model.Environment, DeployedRecord | None, Action]] = {}
        actions = []
        for env in desired.environments():
            key = (env.project, env.name)
            record = deployed.get(key)
            seen = live.get(key)
            if seen:
                actions.append(_judge(env, record, seen))
                continue
            ident = (id(env), id(record))
            hit = self._memo.get(ident)
            action = hit[2] if hit is not None else _judge(env, record, ())
            memo[ident] = (env, record, action)
            actions.append(action)
        self._memo = memo
        return _finish(desired, deployed, actions, state_commit)


def _finish(
    desired: model.DesiredState,
    deployed: Mapping[tuple[str, str], DeployedRecord],
    actions: list[Action],
    state_commit: str | None,
) -> Plan:
    orphans = False
    for key in sorted(deployed):
        record = deployed[key]
        if desired.environment(*key) is None and record.version is not None:
            orphans = True
            actions.append(
                Action(
                    record.project,
                    record.env,
                    ActionKind.ORPHAN,
                    Reason.ORPHANED,
                    None,
                    record.version,
                    strategy=record.strategy,
                    targets=record.targets,
                    detail="no longer declared in the config repo; left running (remove it by hand)",
                )
            )
    if orphans:  # declared environments arrive already ordered
        actions.sort(key=lambda a: (a.project, a.env))
    return Plan(tuple(actions), desired.commit, state_commit, _count(actions))


def _judge(
    env: model.Environment, record: DeployedRecord | None, live: Iterable[Observation]
) -> Action:
    def action(
        kind: ActionKind, reason: Reason, detail: str = "", pin: Pin | None = None
    ) -> Action:
        return Action(
            env.project,
            env.name,
            kind,
            reason,
            env.version,
            record.version if record else None,
            strategy=env.strategy.type.value,
            deploy_type=env.deploy.type.value,
            protected=env.protected,
            targets=tuple(t.label for t in env.targets),
            config_hash=env.config_hash,
            detail=detail,
            pin=pin,
        )

    if record is not None and record.pin is not None:
        pin = record.pin
        if env.version == pin.desired_version:
            by = f" by run {record.run_id}" if record.run_id else ""
            also = (
                "; its configuration changed in Git meanwhile (not applied while pinned)"
                if env.config_hash != pin.desired_hash
                else ""
            )
            return action(
                ActionKind.HOLD,
                Reason.PINNED,
                f"pinned to {pin.version}{by}; Git's {env.version} waits until the "
                f"environment's version changes in Git{also}",
                pin,
            )
    if record is not None and record.last_failure is not None:
        failure = record.last_failure
        if (env.version, env.config_hash) == (failure.version, failure.config_hash) and (
            record.version != env.version or record.config_hash != env.config_hash
        ):
            return action(
                ActionKind.HOLD,
                Reason.FAILED_BEFORE,
                f"{failure.version} ended {failure.outcome} in run {failure.run_id}; "
                "not retried until its configuration changes",
            )
    if record is None or record.version is None:
        return action(ActionKind.DEPLOY, Reason.NEVER_DEPLOYED)
    if record.version != env.version:
        return action(ActionKind.DEPLOY, Reason.VERSION_CHANGED)
    if record.config_hash != env.config_hash:
        return action(ActionKind.DEPLOY, Reason.CONFIG_CHANGED, "effective configuration changed")
    drifted = sorted(
        f"{o.target} ({o.differs})" if o.differs else o.target
        for o in live
        if o.differs
        or (o.version is not None and o.version != record.version)
        or (
            o.image_digest is not None
            and record.image_digest is not None
            and o.image_digest != record.image_digest
        )
    )
    if drifted:
        return action(
            ActionKind.DEPLOY,
            Reason.DRIFT,
            "targets differ from the recorded release: " + ", ".join(drifted),
        )
    return action(ActionKind.NONE, Reason.UNCHANGED)


def _count(actions: Iterable[Action]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.kind.value] = counts.get(a.kind.value, 0) + 1
    return dict(sorted(counts.items()))
