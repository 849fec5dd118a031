"""Turn schema-valid documents into the desired-state model, merging the three levels.

Input is plain parsed YAML that already passed its schema; output is frozen model
objects. Defaults live here, in one place. Pure: no I/O.

Merging (documented in the README): project → environment → task. For an environment,
``deploy``, ``build`` and ``pipeline`` are the project's blocks overlaid with the
environment's ``overrides``; ``variables`` are the project's overlaid with the
environment's; ``strategy`` is the project's default overlaid with the environment's.
For a task, ``variables`` and ``deploy`` overlay the environment's. Mappings merge key
by key; lists and scalars replace. ``${NAME}`` in a variable's value is expanded over
the merged set (environment, task), never in a project's own unmerged set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.durations import parse_duration
from reconciler.gitops import merging, model

_TIERS = {
    "prod": "prod",
    "production": "prod",
    "prd": "prod",
    "live": "prod",
    "staging": "staging",
    "stage": "staging",
    "stg": "staging",
    "preprod": "staging",
    "pre-prod": "staging",
    "uat": "staging",
    "test": "test",
    "testing": "test",
    "qa": "test",
}

DEFAULT_STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "rolling": {"batch_size": 1, "max_unavailable": None, "pause": 0.0},
    "canary": {
        "steps": [10, 50, 100],
        "analysis": {"window": 30.0, "interval": 5.0, "failure_threshold": 1},
        "pause": 0.0,
        "promotion": "auto",
    },
    "blue_green": {"switch": None, "rollback_window": 600.0, "ports": {}},
}
# Keys of the raw config that make up an environment's effective configuration: a change
# to any of them means what runs on the targets changes, so it is redeployed. Strategy,
# release windows and protection change how and when, not what, and are left out.
HASHED_KEYS = ("deploy", "build", "pipeline", "variables", "targets")


def guess_tier(env_name: str) -> str:
    """prod / staging / test / dev from a conventional environment name."""
    return _TIERS.get(env_name.lower(), "dev")


def variables(raw: Mapping[str, Any] | None, expand: bool = True) -> Mapping[str, model.Value]:
    """Variables with ``${NAME}`` expanded and secret references turned into SecretRef.

    ``raw`` is one merged set (an environment's, a task's); the checker has rejected
    every reference that cannot be expanded. ``expand=False`` keeps a project's own,
    not yet merged set as written.
    """
    merged = raw or {}
    if expand:
        merged = merging.expand_variables(merged, is_secret=is_secret_ref)
    out: dict[str, model.Value] = {}
    for name, value in merged.items():
        if isinstance(value, Mapping):
            out[name] = model.SecretRef(value["secret"], value.get("field"))
        else:
            out[name] = value
    return merging.freeze(out)


def is_secret_ref(value: Any) -> bool:
    """Whether a raw variable value is a secret reference (``{secret: …}``)."""
    return isinstance(value, Mapping)


def settings(raw: Mapping[str, Any] | None) -> model.Settings:
    raw = raw or {}
    return model.Settings(
        poll_interval=parse_duration(raw.get("poll_interval"), 60.0) or 60.0,
        branch=raw.get("branch", "main"),
        push_history=raw.get("push_history", True),
        enforce_policy=raw.get("enforce_policy", False),
        public_url=raw.get("public_url"),
        anonymous_status_page=raw.get("anonymous_status_page", False),
        http_listen=raw.get("http", {}).get("listen"),
        quic=hub_settings(raw.get("quic")),
        store=merging.freeze(merging.merge({"backend": "sqlite"}, raw.get("store"))),
        logs=merging.freeze(merging.merge({"backend": "local"}, raw.get("logs"))),
        features=merging.freeze(
            merging.merge(
                {
                    "build": True,
                    "webhooks": True,
                    "schedules": True,
                    "victoria_logs": False,
                    "kubernetes": True,
                },
                raw.get("features"),
            )
        ),
        max_concurrent_builds=raw.get("builds", {}).get("max_concurrent", 2),
        config_webhook=merging.freeze(raw["config_webhook"]) if "config_webhook" in raw else None,
        timeouts=step_timeouts(raw),
    )


def hub_settings(raw: Mapping[str, Any] | None) -> model.HubSettings:
    """``settings.quic``, with the hub's defaults where unset."""
    raw = raw or {}
    return model.HubSettings(
        listen=raw.get("listen"),
        heartbeat=_duration(raw.get("heartbeat"), model.DEFAULT_HUB_HEARTBEAT),
        reconnect_grace=parse_duration(raw.get("reconnect_grace"), None),
        names=tuple(raw.get("names", ())),
        certificate=raw.get("certificate"),
        key=raw.get("key"),
    )


def step_timeouts(raw_settings: Mapping[str, Any] | None) -> model.StepTimeouts:
    """The default step timeouts of ``settings.timeouts`` (the built-in ones where unset)."""
    raw = (raw_settings or {}).get("timeouts", {})
    return model.StepTimeouts(
        task=_duration(raw.get("task"), model.DEFAULT_TASK_TIMEOUT),
        deploy=_duration(raw.get("deploy"), model.DEFAULT_DEPLOY_TIMEOUT),
        build=_duration(raw.get("build"), model.DEFAULT_BUILD_TIMEOUT),
    )


def _duration(value: Any, default: float) -> float:
    seconds = parse_duration(value, default)
    return default if seconds is None else seconds


def users(raw: list[Mapping[str, Any]]) -> dict[str, model.User]:
    return {
        u["username"]: model.User(
            u["username"], u["email"], u.get("display_name", ""), u.get("is_admin", False)
        )
        for u in raw
    }


def agents(raw: list[Mapping[str, Any]] | None) -> dict[str, model.Agent]:
    return {
        a["name"]: model.Agent(
            a["name"],
            merging.freeze(a.get("labels", {})),
            a.get("address"),
            a.get("description", ""),
        )
        for a in raw or []
    }


def callbacks(
    raw: list[Mapping[str, Any]] | None, project: str | None
) -> tuple[model.Callback, ...]:
    return tuple(
        model.Callback(
            name=c["name"],
            type=c["type"],
            url=c["url"],
            events=tuple(c.get("events", ())),
            secret=c.get("secret"),
            format=c.get("format"),
            template=c.get("template"),
            retry=merging.freeze(
                {
                    "attempts": c.get("retry", {}).get("attempts", 3),
                    "backoff": parse_duration(c.get("retry", {}).get("backoff"), 2.0),
                    "max_backoff": parse_duration(c.get("retry", {}).get("max_backoff"), 60.0),
                    "timeout": parse_duration(c.get("retry", {}).get("timeout"), 10.0),
                }
            ),
            enabled=c.get("enabled", True),
            project=project,
        )
        for c in raw or []
    )


def alert_rules(
    raw: list[Mapping[str, Any]] | None, project: str | None
) -> tuple[model.AlertRule, ...]:
    return tuple(
        model.AlertRule(
            name=r["name"],
            event=r["event"],
            callbacks=tuple(r["callbacks"]),
            environment=r.get("environment", "all"),
            severity=r.get("severity", "warning"),
            mode=r.get("mode", "immediate"),
            window=parse_duration(r.get("window")),
            enabled=r.get("enabled", True),
            project=project,
        )
        for r in raw or []
    )


def deploy(
    raw: Mapping[str, Any], default_timeout: float = model.DEFAULT_DEPLOY_TIMEOUT
) -> model.DeployConfig:
    kind = model.DeployType(raw.get("type", "script"))
    return model.DeployConfig(
        type=kind,
        spec=merging.freeze(raw.get(kind.value, {})),
        health=merging.freeze(raw.get("health", {})),
        timeout=_duration(raw.get("timeout"), default_timeout),
    )


def build_config(
    raw: Mapping[str, Any] | None, default_timeout: float = model.DEFAULT_BUILD_TIMEOUT
) -> model.BuildConfig:
    raw = raw or {}
    return model.BuildConfig(
        enabled=raw.get("enabled", False),
        dockerfile=raw.get("dockerfile", "Dockerfile"),
        context=raw.get("context", "."),
        target=raw.get("target"),
        args=merging.freeze({k: str(v) for k, v in raw.get("args", {}).items()}),
        target_image=raw.get("target_image"),
        registry_credential=raw.get("registry_credential"),
        cache=raw.get("cache", True),
        timeout=_duration(raw.get("timeout"), default_timeout),
    )


def strategy(raw: Mapping[str, Any] | None) -> model.Strategy:
    raw = raw or {}
    kind = model.StrategyType(raw.get("type", "rolling"))
    params = merging.merge(DEFAULT_STRATEGY_PARAMS[kind.value], raw.get(kind.value))
    for key in ("pause", "rollback_window"):
        if key in params:
            params[key] = parse_duration(params[key], 0.0)
    if "analysis" in params:
        for key in ("window", "interval"):
            params["analysis"][key] = parse_duration(params["analysis"][key], 0.0)
    return model.Strategy(kind, merging.freeze(params), raw.get("auto_rollback", True))


DEFAULT_TIMEOUTS = model.StepTimeouts()
DEFAULT_PIPELINE: Mapping[str, Any] = {
    "stages": [{"name": "deploy", "tasks": [{"name": "deploy", "uses": "deploy"}]}]
}


def pipeline(
    raw: Mapping[str, Any] | None,
    env_variables: Mapping[str, Any],
    env_deploy: Mapping[str, Any],
    timeouts: model.StepTimeouts = DEFAULT_TIMEOUTS,
) -> model.Pipeline:
    """The pipeline with task variables and deploy merged over the environment's."""
    raw = raw or DEFAULT_PIPELINE
    stages = []
    for s in raw["stages"]:
        tasks = []
        for t in s["tasks"]:
            task_deploy = (
                deploy(merging.merge(env_deploy, t["deploy"]), timeouts.deploy)
                if "deploy" in t
                else None
            )
            tasks.append(
                model.Task(
                    name=t["name"],
                    uses=t.get("uses"),
                    run=t.get("run"),
                    on=t.get("run_on", "reconciler"),
                    when=t.get("when"),
                    timeout=_duration(t.get("timeout"), timeouts.task),
                    retries=t.get("retries", 0),
                    variables=variables(merging.merge(env_variables, t.get("variables"))),
                    deploy=task_deploy,
                    description=t.get("description", ""),
                )
            )
        approval = None
        if "approval" in s and s["approval"].get("required", True):
            a = s["approval"]
            approval = model.Approval(
                roles=tuple(a.get("roles", ("owner", "maintainer"))),
                timeout=parse_duration(a.get("timeout")),
                environments=tuple(a.get("environments", ())),
            )
        stages.append(model.Stage(s["name"], tuple(tasks), s.get("when"), approval))
    return model.Pipeline(tuple(stages))


def targets(raw: list[Mapping[str, Any]] | None) -> tuple[model.Target, ...]:
    return tuple(
        model.Target(
            agent=t.get("agent"),
            selector=merging.freeze(t.get("selector", {})),
            local=t.get("local"),
            address=t.get("address"),
            port=t.get("port"),
        )
        for t in raw or []
    )


def effective_config(project_raw: Mapping[str, Any], env_raw: Mapping[str, Any]) -> dict[str, Any]:
    """The merged raw configuration of an environment (project → environment)."""
    overrides = env_raw.get("overrides", {})
    return {
        "deploy": merging.merge(project_raw.get("deploy"), overrides.get("deploy")),
        "build": merging.merge(project_raw.get("build"), overrides.get("build")),
        "pipeline": merging.merge(
            project_raw.get("pipeline") or DEFAULT_PIPELINE, overrides.get("pipeline")
        ),
        "variables": merging.merge(project_raw.get("variables"), env_raw.get("variables")),
        "targets": env_raw.get("targets", []),
        "strategy": merging.merge(project_raw.get("strategy"), env_raw.get("strategy")),
    }


def environment(
    project: str,
    name: str,
    project_raw: Mapping[str, Any],
    env_raw: Mapping[str, Any],
    source: model.Source,
    timeouts: model.StepTimeouts = DEFAULT_TIMEOUTS,
) -> model.Environment:
    """One environment; steps that name no timeout get ``timeouts`` (from settings)."""
    eff = effective_config(project_raw, env_raw)
    tier = env_raw.get("tier") or guess_tier(name)
    return model.Environment(
        project=project,
        name=name,
        version=str(env_raw["version"]),
        tier=tier,
        protected=env_raw.get("protected", tier == "prod"),
        strategy=strategy(eff["strategy"]),
        deploy=deploy(eff["deploy"], timeouts.deploy),
        build=build_config(eff["build"], timeouts.build),
        pipeline=pipeline(eff["pipeline"], eff["variables"], eff["deploy"], timeouts),
        variables=variables(eff["variables"]),
        targets=targets(eff["targets"]),
        release_windows=tuple(
            model.ReleaseWindow(tuple(w["days"]), w["start"], w["end"], w.get("timezone", "UTC"))
            for w in env_raw.get("release_windows", [])
        ),
        auto_update=env_raw.get("auto_update", False),
        four_eyes=bool(env_raw.get("approval", {}).get("four_eyes", False)),
        config_hash=merging.stable_hash({k: eff[k] for k in HASHED_KEYS}),
        source=source,
    )


def project(
    name: str, raw: Mapping[str, Any], envs: Mapping[str, model.Environment], source: model.Source
) -> model.Project:
    triggers = raw.get("triggers", {})
    repo = raw.get("repo")
    settings_part = {k: v for k, v in raw.items() if k != "members"}
    return model.Project(
        name=name,
        members=tuple(
            model.Member(m["user"], m["role"], m.get("added_by")) for m in raw["members"]
        ),
        environments=merging.freeze(dict(envs)),
        description=raw.get("description", ""),
        repo=model.Repo(repo["url"], repo.get("branch", "main"), repo.get("credential"))
        if repo
        else None,
        variables=variables(raw.get("variables"), expand=False),
        webhooks=tuple(
            model.WebhookTrigger(
                project=name,
                name=w["name"],
                source=w["source"],
                secret=w["secret"],
                action=w["action"],
                branches=tuple(w.get("branches", ())),
                events=tuple(w.get("events", ("push",))),
                target_env=w.get("target_env"),
                enabled=w.get("enabled", True),
            )
            for w in triggers.get("webhooks", [])
        ),
        schedules=tuple(
            model.ScheduleTrigger(
                project=name,
                name=s["name"],
                cron=s["cron"],
                action=s["action"],
                target_env=s["target_env"],
                timezone=s.get("timezone", "UTC"),
                missed=s.get("missed", "run_once"),
                enabled=s.get("enabled", True),
            )
            for s in triggers.get("schedules", [])
        ),
        callbacks=callbacks(raw.get("callbacks"), name),
        alert_rules=alert_rules(raw.get("alert_rules"), name),
        settings_hash=merging.stable_hash(settings_part),
        members_hash=merging.stable_hash(raw["members"]),
        source=source,
    )


def credentials(
    raw: Mapping[str, Any], project: str | None, source: model.Source
) -> dict[str, model.CredentialInfo]:
    return {
        name: model.CredentialInfo(
            name, c.get("type", ""), c.get("description", ""), project, source
        )
        for name, c in (raw.get("credentials") or {}).items()
    }
