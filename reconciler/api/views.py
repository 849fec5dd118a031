"""What the JSON API and the status page show: engine and model values as plain dicts.

One builder per thing shown (``environment_view``, ``project_view``, ``overview``,
``run_view``, ``history_view``, ``agents_view``, ``webhook_view``) and the list envelope
(``page``), shared by ``routes`` and ``pages`` so both show the same facts.

What this module must not do: see HTTP (no Request, no Response: callers pass the
caller's ``Principal`` and the values to show) or show a secret (webhook secrets are
shown by credential name only). Reading the engine's stores is all the I/O it does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.api import auth
from reconciler.auth import permissions
from reconciler.engine.control import EngineControl
from reconciler.gitops import model
from reconciler.gitops.planning import Action, DeployedRecord, Plan
from reconciler.hub import registry
from reconciler.log.store import LogLine
from reconciler.runs import Decision, Run, RunState, Step, StepKind


def _last_run(run: Run | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run.id,
        "state": run.state.value,
        "version": run.version,
        "trigger": run.trigger.value,
        "created_at": run.created_at,
        "finished_at": run.finished_at or None,
    }


def _pin(record: DeployedRecord | None) -> dict[str, Any] | None:
    """The pin a state record holds: the version kept, and what Git asked for then."""
    if record is None or record.pin is None:
        return None
    return {
        "version": record.pin.version,
        "desired_version": record.pin.desired_version,
        "run_id": record.run_id,
    }


def _changed_by(record: DeployedRecord | None, deployer: Run | None) -> dict[str, Any] | None:
    """Who put the deployed version in place: the run's actor, else how it was triggered."""
    if record is None or not record.version:
        return None
    if deployer is None:
        return {"actor": "", "trigger": "", "run_id": record.run_id or None}
    actor = deployer.actor or str(deployer.detail.get("committer") or "")
    return {"actor": actor, "trigger": deployer.trigger.value, "run_id": deployer.id}


def environment_view(
    env: model.Environment,
    record: DeployedRecord | None,
    action: Action | None,
    last: Run | None,
    deployer: Run | None = None,
    skipped: str | None = None,
) -> dict[str, Any]:
    """One environment: desired vs deployed (since when, by whom), drift and the last run;
    ``skipped``: why this reconciler cannot run it at all (it is never planned here)."""
    deployed = record.version if record else None
    reason = action.reason.value if action else None
    return {
        "project": env.project,
        "name": env.name,
        "tier": env.tier,
        "protected": env.protected,
        "desired_version": env.version,
        "deployed_version": deployed,
        "in_sync": action is not None and not action.kind.is_change and reason == "unchanged",
        "drift": reason,
        "plan_action": action.kind.value if action else None,
        "plan_detail": action.detail if action else "",
        "strategy": env.strategy.type.value,
        "deploy_type": env.deploy.type.value,
        "targets": [t.label for t in env.targets],
        "pinned": bool(record and record.pin),
        "pin": _pin(record),
        "last_failure": (
            {
                "version": record.last_failure.version,
                "outcome": record.last_failure.outcome,
                "run_id": record.last_failure.run_id,
            }
            if record and record.last_failure
            else None
        ),
        "deployed_at": record.finished_at if record else None,
        "changed_by": _changed_by(record, deployer),
        "four_eyes": env.four_eyes,
        "config_commit": record.config_commit if record else None,
        "last_run": _last_run(last),
        "skipped": skipped,
    }


def project_view(
    engine: EngineControl,
    project: model.Project,
    principal: auth.Principal,
    deployed: dict[tuple[str, str], DeployedRecord],
    plan: Plan | None,
) -> dict[str, Any]:
    """One project with all its environments."""
    actions = {(a.project, a.env): a for a in plan.actions} if plan else {}
    envs = []
    for name, env in sorted(project.environments.items(), key=lambda kv: _env_order(kv[1])):
        record = deployed.get((project.name, name))
        last = engine.runs.latest(project.name, name)
        deployer = last if last and record and last.id == record.run_id else None
        if deployer is None and record and record.run_id:
            deployer = engine.runs.get(record.run_id)
        action = actions.get((project.name, name))
        envs.append(environment_view(env, record, action, last, deployer, engine.unrunnable(env)))
    role = project.role_of(principal.user.username) if principal.user else None
    return {
        "name": project.name,
        "description": project.description,
        "role": role,
        "environments": envs,
    }


TIER_ORDER = {
    "development": 0,
    "dev": 0,
    "test": 1,
    "testing": 1,
    "staging": 2,
    "production": 4,
    "prod": 4,
}


def _env_order(env: model.Environment) -> tuple[int, str]:
    # Environments read left to right as a release travels: dev → staging → prod.
    return (TIER_ORDER.get(env.tier, 3), env.name)


def safe_plan(engine: EngineControl) -> Plan | None:
    """The current plan, or None when planning fails (views then show no drift)."""
    try:
        return engine.plan()
    except Exception:  # noqa: BLE001 - the page still shows desired/deployed without a plan
        return None


def overview(engine: EngineControl, principal: auth.Principal) -> list[dict[str, Any]]:
    """Every project the caller may see, with environments (the grid)."""
    desired = engine.desired
    if desired is None:
        return []
    deployed = engine.deployed()
    plan = safe_plan(engine)
    return [
        project_view(engine, p, principal, deployed, plan)
        for _, p in sorted(desired.projects.items())
        if auth.visible(principal, p)
    ]


#: Last runs that leave their environment needing someone: they ended without the release.
NEEDS_ATTENTION = frozenset({RunState.FAILED, RunState.ROLLED_BACK, RunState.INTERRUPTED})
#: Drift reasons the reconcile loop settles by itself (a new release to roll out).
_ROUTINE = frozenset({"unchanged", "version_changed", "config_changed", "never_deployed"})


def _waiting_since(engine: EngineControl, run: Run, gate: str) -> str:
    step = engine.runs.step(run.id, gate) if gate else None
    return (step.started_at if step else "") or run.started_at or run.created_at


def approval_view(
    engine: EngineControl,
    run: Run,
    desired: model.DesiredState,
    principal: auth.Principal,
) -> dict[str, Any]:
    """A run waiting at a gate: which gate, since when, who may decide it and how."""
    gate = str(run.detail.get("gate", ""))
    project = desired.projects[run.project]
    env = project.environments.get(run.env)
    protected = env.protected if env else False
    promote = gate.startswith("promote:")
    stage_roles: tuple[str, ...] | None = None
    if promote:
        stage_roles = tuple(r.value for r in permissions.roles_allowed("deploy", protected))
    elif env is not None:
        stage = next((s for s in env.pipeline.stages if f"approval:{s.name}" == gate), None)
        if stage is not None and stage.approval is not None:
            stage_roles = tuple(stage.approval.roles)
    four_eyes = bool(env and env.four_eyes and not promote)
    excluded: list[str] = []
    if four_eyes:
        excluded = sorted(set(engine.change_authors(run.id)) | ({run.actor} - {""}))
    members = [(m.user, m.role) for m in project.members]
    admins = [u.username for u in desired.users.values() if u.is_admin]
    verb = "promote" if promote else "approve"
    view = {
        "run_id": run.id,
        "project": run.project,
        "environment": run.env,
        "version": run.version,
        "gate": gate,
        "since": _waiting_since(engine, run, gate),
        "roles": [r.value for r in permissions.gate_roles(protected, stage_roles)],
        "four_eyes": four_eyes,
        "command": f"quicflow {verb} {run.id}",
        "api": f"POST {auth.API_PREFIX}/runs/{run.id}/{verb}",
        "approvers": None,
        "excluded": None,
    }
    # Member names are for logged-in readers; an open page shows the roles only.
    if not principal.is_anonymous:
        view["approvers"] = list(
            permissions.approvers(members, admins, protected, stage_roles, excluded)
        )
        view["excluded"] = excluded
    return view


def attention_view(
    engine: EngineControl, principal: auth.Principal, projects: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """What needs someone, from the overview's ``projects``: gates waiting for a decision,
    environments whose last run failed or was rolled back, drift the loop does not settle,
    and runs in progress."""
    desired = engine.desired
    visible = {p["name"] for p in projects}
    active = [r for r in engine.runs.active() if r.project in visible]
    busy = {r.key for r in active}
    approvals = [
        approval_view(engine, r, desired, principal)
        for r in active
        if desired is not None and r.state is RunState.WAITING_APPROVAL
    ]
    running = [
        {
            **(_last_run(r) or {}),
            "project": r.project,
            "environment": r.env,
            "started_at": r.started_at,
        }
        for r in active
        if r.state is not RunState.WAITING_APPROVAL
    ]
    failed, drifted = [], []
    for project in projects:
        for env in project["environments"]:
            key = (project["name"], env["name"])
            last = env["last_run"]
            if key in busy:
                continue
            if last and RunState(last["state"]) in NEEDS_ATTENTION:
                failed.append({**last, "project": key[0], "environment": key[1]})
            elif env["drift"] and env["drift"] not in _ROUTINE:
                drifted.append(
                    {
                        "project": key[0],
                        "environment": key[1],
                        "drift": env["drift"],
                        "detail": env["plan_detail"],
                        "deployed_version": env["deployed_version"],
                        "desired_version": env["desired_version"],
                    }
                )
    failed.sort(key=lambda r: r["created_at"], reverse=True)
    approvals.sort(key=lambda a: a["since"])
    return {"approvals": approvals, "failed": failed, "drifted": drifted, "running": running}


def decision_view(decision: Decision) -> dict[str, Any]:
    """Who approved or rejected a gate, when, and what they said."""
    return {
        "gate": decision.gate,
        "decision": "approved" if decision.approved else "rejected",
        "by": decision.user,
        "at": decision.at,
        "comment": decision.comment,
    }


def run_view(run: Run, steps: Iterable[Step], decisions: Iterable[Decision] = ()) -> dict[str, Any]:
    """A run with its steps grouped as stages → tasks, plus the strategy's progress.

    Step keys are typed (``reconciler.runs.StepKey``): ``stage:NAME``,
    ``task:STAGE/TASK``; every other step (``deploy:web-1``, ``analysis:1``, ``batch:2``…)
    is a strategy/target step. ``progress`` counts targets deployed out of the targets
    the rollout covers (gates, checks and pauses are steps, not progress). ``gate`` is
    the gate a waiting run waits at; ``decisions`` says who approved or rejected which
    gate, when, and their comment.
    """
    stages: dict[str, dict[str, Any]] = {}
    other: list[dict[str, Any]] = []
    for step in steps:
        kind, _, name = step.key.partition(":")
        item = step.as_dict()
        item["name"] = name
        if kind == "stage":
            stages.setdefault(name, {"name": name, "tasks": []}).update(item)
        elif kind == "task":
            stage, _, task = name.partition("/")
            item["name"] = task or name
            stages.setdefault(
                stage, {"name": stage, "key": f"stage:{stage}", "status": "pending", "tasks": []}
            )["tasks"].append(item)
        else:
            item["kind"] = kind
            other.append(item)
    deploys = [s for s in other if s["kind"] == StepKind.DEPLOY.value]
    done = sum(1 for s in deploys if s["status"] in ("succeeded", "skipped"))
    total = max(len(run.detail.get("targets") or ()), len(deploys))
    view = run.as_dict()
    view.update(
        {
            "decisions": [decision_view(d) for d in decisions],
            "gate": run.detail.get("gate") if run.state.is_waiting else None,
            "stages": list(stages.values()),
            "steps": other,
            "final": run.state.is_final,
            "waiting": run.state.is_waiting,
            "progress": {
                "done": done,
                "total": total,
                "percent": round(100 * done / total)
                if total
                else (100 if run.state is RunState.SUCCEEDED else 0),
            },
        }
    )
    return view


def history_view(engine: EngineControl, project: str, env: str, limit: int) -> list[dict[str, Any]]:
    """State commits of one environment, newest first, with the config commit applied."""
    out = []
    for entry in engine.history.entries(project, env, limit):
        record = entry.record
        out.append(
            {
                "project": project,
                "environment": env,
                "state_commit": entry.commit.id,
                "time": entry.commit.time,
                "summary": entry.commit.summary,
                "version": record.version if record else None,
                "outcome": record.outcome if record else None,
                "config_commit": record.config_commit if record else None,
                "run_id": record.run_id if record else None,
                "strategy": record.strategy if record else None,
                "pinned": bool(record and record.pin),
                "pin": _pin(record),
                "last_failure": (
                    None
                    if not record or not record.last_failure
                    else {
                        "version": record.last_failure.version,
                        "outcome": record.last_failure.outcome,
                        "run_id": record.last_failure.run_id,
                    }
                ),
            }
        )
    return out


def agents_view(engine: EngineControl) -> list[dict[str, Any]]:
    """Connected agents when the engine has a hub, each with the processes and containers
    of its latest status report; process command lines are not shown."""
    hub = getattr(engine, "hub", None)
    if hub is None:
        return []
    return [registry.as_json(info) for info in sorted(hub.agents(), key=lambda a: a.name)]


def webhook_view(hook: model.WebhookTrigger) -> dict[str, Any]:
    """A declared webhook trigger and the URL to point the provider at."""
    # The secret is a credential *name*; its value never leaves the credential manager.
    return {
        "id": hook.id,
        "project": hook.project,
        "name": hook.name,
        "source": hook.source,
        "action": hook.action,
        "branches": list(hook.branches),
        "events": list(hook.events),
        "target_env": hook.target_env,
        "enabled": hook.enabled,
        "url": f"{auth.API_PREFIX}/webhooks/{hook.id}/trigger",
    }


def page(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    """One page of a list, as every list endpoint answers it."""
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def caller_view(principal: auth.Principal, desired: model.DesiredState | None) -> dict[str, Any]:
    """Who is asking, and their role in each project that gives them one."""
    user = principal.user
    roles = {}
    if desired is not None and user is not None:
        roles = {
            name: p.role_of(user.username)
            for name, p in sorted(desired.projects.items())
            if p.role_of(user.username)
        }
    return {
        "username": principal.name,
        "anonymous": principal.is_anonymous,
        "via": principal.via,
        "display_name": user.display_name if user else "",
        "is_admin": bool(user and user.is_admin),
        "roles": roles,
    }


def members_view(project: model.Project, users: Mapping[str, model.User]) -> list[dict[str, Any]]:
    """A project's members (from Git) with the users' names."""
    items = []
    for member in project.members:
        user = users.get(member.user)
        items.append(
            {
                "user": member.user,
                "role": member.role,
                "added_by": member.added_by,
                "display_name": user.display_name if user else "",
                "is_admin": bool(user and user.is_admin),
            }
        )
    return items


def histories_view(
    engine: EngineControl,
    projects: Iterable[model.Project],
    limit: int,
    project: str | None = None,
    env: str | None = None,
) -> list[dict[str, Any]]:
    """State commits of the environments of ``projects`` (or only ``project``/``env``), newest first."""
    items = []
    for p in projects:
        if project and p.name != project:
            continue
        for name in sorted(p.environments):
            if env and name != env:
                continue
            items += history_view(engine, p.name, name, limit)
    items.sort(key=lambda e: (e["time"], e["state_commit"]), reverse=True)
    return items


def log_view(
    engine: EngineControl, run_id: str, lines: list[LogLine], after: int
) -> dict[str, Any]:
    """A slice of a run's stored (masked) log lines, and where to go on from."""
    return {
        "run_id": run_id,
        "lines": [line.as_dict() for line in lines],
        "last_seq": lines[-1].seq if lines else after,
        "closed": engine.logs.is_closed(run_id),
    }


def log_text(engine: EngineControl, run_id: str, contains: str | None) -> str:
    """A run's whole stored (masked) log as plain text, one line per log line."""
    out: list[str] = []
    after = 0
    while True:
        lines = engine.logs.read(run_id, after, 5000, contains)
        if not lines:
            break
        for line in lines:
            source = f" [{line.source}]" if line.source else ""
            out.append(f"{line.at}{source} {line.channel}: {line.line}\n")
        after = lines[-1].seq
    return "".join(out)


def config_view(engine: EngineControl) -> dict[str, Any]:
    """GET /api/release/config and the page's notice: the commit in force, and the newest
    commit with each of its problems as ``path:line:col: message`` when it was refused."""
    status = engine.config_status()
    history = engine.history.status()
    return {
        "in_force": status.in_force,
        "newest": {
            "commit": status.newest,
            "valid": status.valid,
            "author": status.author or None,
            "summary": status.summary or None,
        },
        "problems": [
            {
                "text": str(p),
                "path": p.path,
                "line": p.line,
                "column": p.column,
                "message": p.message,
                "json_path": p.json_path,
            }
            for p in status.problems
        ],
        "history": history.as_dict(),
        "history_problem": history.problem or None,
    }
