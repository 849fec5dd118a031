"""Checks across files and inside values that a JSON Schema cannot express.

Members name defined users; alert rules name defined callbacks; credential and agent
references resolve (a project may use its own credentials and global ones, never
another project's); names are unique; cron expressions, time zones, branch globs,
``when:`` conditions and notification templates compile; strategy parameters are
coherent; every ``${NAME}`` in a variable's value expands in each merged set it is in.
Each check yields a ``Finding`` (file, JSON path, message); the loader turns findings
into located problems. Pure: works on parsed documents, does no I/O.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from reconciler.gitops import merging, model
from reconciler.gitops.building import effective_config, is_secret_ref, step_timeouts
from reconciler.rules import batches, branches, expressions, templates, windows

RESERVED_PREFIX = "QUICFLOW_"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by a cross-check, not yet located in its file."""

    file: str
    path: tuple[str | int, ...]
    message: str
    at_key: bool = False


@dataclass(frozen=True, slots=True)
class GlobalContext:
    """What project checks need to know from quicflow.yaml and the global credentials."""

    users: frozenset[str] = frozenset()
    agents: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    callbacks: frozenset[str] = frozenset()
    credentials: frozenset[str] = frozenset()
    # Not a check: the loader hands the defaults of settings.timeouts to the builder.
    timeouts: model.StepTimeouts = model.StepTimeouts()


def check_global(
    path: str, doc: Mapping[str, Any], credentials: frozenset[str]
) -> Iterator[Finding]:
    """Checks of quicflow.yaml on its own."""
    yield from _unique(path, doc.get("users", []), "username", ("users",), "user")
    emails: dict[str, int] = {}
    for i, user in enumerate(doc.get("users", [])):
        email = user["email"].lower()
        if email in emails:
            yield Finding(
                path,
                ("users", i, "email"),
                f"email {user['email']!r} is already used by users[{emails[email]}]",
            )
        emails.setdefault(email, i)
    yield from _unique(path, doc.get("agents", []), "name", ("agents",), "agent")
    yield from _unique(path, doc.get("callbacks", []), "name", ("callbacks",), "callback")
    yield from _unique(path, doc.get("alert_rules", []), "name", ("alert_rules",), "alert rule")
    callbacks = {c["name"] for c in doc.get("callbacks", [])}
    for i, cb in enumerate(doc.get("callbacks", [])):
        yield from _callback(path, ("callbacks", i), cb, credentials, "global")
    for i, rule in enumerate(doc.get("alert_rules", [])):
        for j, name in enumerate(rule["callbacks"]):
            if name not in callbacks:
                yield Finding(
                    path,
                    ("alert_rules", i, "callbacks", j),
                    f"unknown callback {name!r}; declared: {_list(callbacks)}",
                )
    settings = doc.get("settings", {})
    for key_path in (("store", "dsn_credential"), ("config_webhook", "secret")):
        value = settings.get(key_path[0], {}).get(key_path[1])
        if value is not None and value not in credentials:
            yield Finding(
                path,
                ("settings", *key_path),
                f"unknown credential {value!r}; global credentials: {_list(credentials)}",
            )


def global_context(doc: Mapping[str, Any], credentials: frozenset[str]) -> GlobalContext:
    return GlobalContext(
        users=frozenset(u["username"] for u in doc.get("users", [])),
        agents={a["name"]: a.get("labels", {}) for a in doc.get("agents", [])},
        callbacks=frozenset(c["name"] for c in doc.get("callbacks", [])),
        credentials=credentials,
        timeouts=step_timeouts(doc.get("settings")),
    )


def check_project(
    name: str,
    path: str,
    doc: Mapping[str, Any],
    envs: Mapping[str, tuple[str, Mapping[str, Any]]],
    env_names: frozenset[str],
    own_credentials: frozenset[str],
    ctx: GlobalContext,
) -> Iterator[Finding]:
    """Checks of one project: project.yaml and its schema-valid environment files.

    ``envs`` maps environment name → (path, document) for the files that passed their
    schema; ``env_names`` has every environment, so references to a broken one are not
    reported as unknown on top of its own problems.
    """
    usable = own_credentials | ctx.credentials

    def cred(file: str, where: tuple[str | int, ...], value: str | None) -> Iterator[Finding]:
        if value is not None and value not in usable:
            yield Finding(
                file,
                where,
                f"unknown credential {value!r}; project {name!r} may use: {_list(usable)}",
            )

    # Members
    owners = 0
    seen: dict[str, int] = {}
    for i, m in enumerate(doc.get("members", [])):
        if m["user"] not in ctx.users:
            yield Finding(
                path,
                ("members", i, "user"),
                f"unknown user {m['user']!r}; users are declared in quicflow.yaml",
            )
        if m["user"] in seen:
            yield Finding(
                path,
                ("members", i, "user"),
                f"user {m['user']!r} is already a member (members[{seen[m['user']]}])",
            )
        seen.setdefault(m["user"], i)
        owners += m["role"] == "owner"
        if m.get("added_by") is not None and m["added_by"] not in ctx.users:
            yield Finding(path, ("members", i, "added_by"), f"unknown user {m['added_by']!r}")
    if doc.get("members") and not owners:
        yield Finding(path, ("members",), "a project needs at least one member with role 'owner'")

    # Credentials referenced by the project file
    yield from cred(path, ("repo", "credential"), doc.get("repo", {}).get("credential"))
    yield from _build(path, ("build",), doc.get("build"), cred)
    yield from _deploy(path, ("deploy",), doc.get("deploy"), cred)
    yield from _variables(path, ("variables",), doc.get("variables"), cred)
    for reference in merging.reference_problems(doc.get("variables") or {}, is_secret_ref):
        # The project's own set is checked for what no environment can change; the rest
        # is checked on each environment's merged set below.
        if not reference.kind.depends_on_merge:
            yield Finding(path, ("variables", reference.variable), reference.message)
    if "strategy" in doc:
        yield from _strategy(path, ("strategy",), doc["strategy"])

    # Callbacks and alert rules
    yield from _unique(path, doc.get("callbacks", []), "name", ("callbacks",), "callback")
    yield from _unique(path, doc.get("alert_rules", []), "name", ("alert_rules",), "alert rule")
    callbacks = ctx.callbacks | {c["name"] for c in doc.get("callbacks", [])}
    for i, cb in enumerate(doc.get("callbacks", [])):
        yield from _callback(path, ("callbacks", i), cb, usable, name)
    for i, rule in enumerate(doc.get("alert_rules", [])):
        for j, cb_name in enumerate(rule["callbacks"]):
            if cb_name not in callbacks:
                yield Finding(
                    path,
                    ("alert_rules", i, "callbacks", j),
                    f"unknown callback {cb_name!r}; declared: {_list(callbacks)}",
                )

    # Triggers
    triggers = doc.get("triggers", {})
    yield from _unique(
        path, triggers.get("webhooks", []), "name", ("triggers", "webhooks"), "webhook"
    )
    yield from _unique(
        path, triggers.get("schedules", []), "name", ("triggers", "schedules"), "schedule"
    )
    for i, hook in enumerate(triggers.get("webhooks", [])):
        where = ("triggers", "webhooks", i)
        yield from cred(path, (*where, "secret"), hook["secret"])
        for j, pattern in enumerate(hook.get("branches", [])):
            problem = _glob_problem(pattern)
            if problem:
                yield Finding(path, (*where, "branches", j), problem)
        env = hook.get("target_env")
        if hook["action"] == "deploy" and env is None:
            yield Finding(path, where, "action 'deploy' needs 'target_env'")
        if env is not None and env not in env_names:
            yield Finding(
                path,
                (*where, "target_env"),
                f"unknown environment {env!r}; environments: {_list(env_names)}",
            )
    for i, sched in enumerate(triggers.get("schedules", [])):
        where = ("triggers", "schedules", i)
        if not croniter.is_valid(sched["cron"]):
            yield Finding(path, (*where, "cron"), f"invalid cron expression {sched['cron']!r}")
        if not _zone_ok(sched.get("timezone", "UTC")):
            yield Finding(path, (*where, "timezone"), f"unknown time zone {sched['timezone']!r}")
        if sched["target_env"] not in env_names:
            yield Finding(
                path,
                (*where, "target_env"),
                f"unknown environment {sched['target_env']!r}; environments: {_list(env_names)}",
            )

    # Pipeline of the project
    if "pipeline" in doc:
        yield from _pipeline(path, ("pipeline",), doc["pipeline"], env_names, cred)

    # Environments, checked on their merged view so a missing block is caught wherever it is
    for env_name, (env_path, env_doc) in sorted(envs.items()):
        overrides = env_doc.get("overrides", {})
        yield from _deploy(env_path, ("overrides", "deploy"), overrides.get("deploy"), cred)
        yield from _build(env_path, ("overrides", "build"), overrides.get("build"), cred)
        yield from _variables(env_path, ("variables",), env_doc.get("variables"), cred)
        if "pipeline" in overrides:
            yield from _pipeline(
                env_path, ("overrides", "pipeline"), overrides["pipeline"], env_names, cred
            )
        if "strategy" in env_doc:
            yield from _strategy(env_path, ("strategy",), env_doc["strategy"])
        eff = effective_config(doc, env_doc)
        yield from _effective(env_path, path, eff, env_doc)
        yield from _references(env_name, env_path, path, eff, env_doc)
        for i, target in enumerate(env_doc.get("targets", [])):
            yield from _target(env_path, ("targets", i), target, ctx)
        for i, w in enumerate(env_doc.get("release_windows", [])):
            for problem in windows.window_problems(
                w.get("timezone", "UTC"), w["days"], w["start"], w["end"]
            ):
                yield Finding(env_path, ("release_windows", i), problem)


def _effective(
    env_path: str, project_path: str, eff: Mapping[str, Any], env_doc: Mapping[str, Any]
) -> Iterator[Finding]:
    """Checks of an environment's merged configuration.

    A fault is reported where it can be fixed: in the environment file when it overrides
    the block, else once in project.yaml (the loader drops the repeats of other
    environments).
    """
    deploy = eff["deploy"]
    kind = deploy.get("type")
    overrides = env_doc.get("overrides", {})
    file, where = (
        (env_path, ("overrides", "deploy"))
        if "deploy" in overrides
        else (project_path, ("deploy",))
    )
    if kind is None:
        yield Finding(
            file,
            where,
            "no deploy type: set deploy.type in project.yaml or overrides.deploy.type here",
        )
        return
    block = deploy.get(kind)
    required = {"script": "run", "git_pull": "directory", "kubernetes": "deployment"}
    if kind in required and not (block and block.get(required[kind])):
        yield Finding(
            file,
            where,
            f"deploy type {kind!r} needs deploy.{kind}.{required[kind]} "
            "(in project.yaml or overrides)",
        )
    if (
        kind == "container"
        and not (block or {}).get("image")
        and not eff["build"].get("target_image")
    ):
        yield Finding(
            file,
            where,
            "deploy type 'container' needs deploy.container.image or build.target_image",
        )
    if eff["build"].get("enabled") and not eff["build"].get("target_image"):
        bfile, bwhere = (
            (env_path, ("overrides", "build"))
            if "build" in overrides
            else (project_path, ("build",))
        )
        yield Finding(bfile, bwhere, "build.enabled needs build.target_image")
    if kind in ("script", "git_pull", "container") and not eff["targets"]:
        yield Finding(env_path, ("targets",), f"deploy type {kind!r} needs at least one target")


def _references(
    env_name: str,
    env_path: str,
    project_path: str,
    eff: Mapping[str, Any],
    env_doc: Mapping[str, Any],
) -> Iterator[Finding]:
    """``${NAME}`` references, on the merged sets of one environment and of its tasks.

    Each problem is reported on the variable whose value holds the reference, in the
    file that defines it; a project-level one names the environment when another
    level's variables decide it (an undefined name, a secret, a cycle).
    """
    own = env_doc.get("variables") or {}

    def located(name: str) -> tuple[str, tuple[str | int, ...]]:
        return (env_path if name in own else project_path), ("variables", name)

    def with_env(file: str, problem: merging.ReferenceProblem) -> str:
        if file == project_path and problem.kind.depends_on_merge:
            return f"{problem.message} (in environment {env_name!r})"
        return problem.message

    reported = set()
    for problem in merging.reference_problems(eff["variables"], is_secret_ref):
        file, where = located(problem.variable)
        reported.add((problem.variable, problem.message))
        yield Finding(file, where, with_env(file, problem))

    overrides = env_doc.get("overrides", {}).get("pipeline") or {}
    tasks_file, base = (
        (env_path, ("overrides", "pipeline"))
        if "stages" in overrides
        else (project_path, ("pipeline",))
    )
    for i, stage in enumerate(eff["pipeline"].get("stages", [])):
        for j, task in enumerate(stage["tasks"]):
            task_vars = task.get("variables") or {}
            if not task_vars:
                continue
            merged = merging.merge(eff["variables"], task_vars)
            for problem in merging.reference_problems(merged, is_secret_ref):
                if problem.variable in task_vars:
                    where = (*base, "stages", i, "tasks", j, "variables", problem.variable)
                    yield Finding(tasks_file, where, with_env(tasks_file, problem))
                elif (problem.variable, problem.message) not in reported:
                    # Fine for the environment, broken by what the task overrides.
                    file, where = located(problem.variable)
                    context = f"with the variables of task {task['name']!r}"
                    if file == project_path:
                        context += f" in environment {env_name!r}"
                    yield Finding(file, where, f"{problem.message} ({context})")


def _target(
    path: str, where: tuple[str | int, ...], target: Mapping[str, Any], ctx: GlobalContext
) -> Iterator[Finding]:
    kinds = [k for k in ("agent", "selector", "local") if k in target]
    if len(kinds) != 1:
        yield Finding(
            path,
            where,
            "a target names exactly one of agent, selector or local"
            + (f"; got {', '.join(kinds)}" if kinds else ""),
        )
        return
    if "agent" in target and target["agent"] not in ctx.agents:
        yield Finding(
            path,
            (*where, "agent"),
            f"unknown agent {target['agent']!r}; agents are "
            f"declared in quicflow.yaml: {_list(ctx.agents)}",
        )
    if "selector" in target:
        wanted = target["selector"]
        if not any(
            all(labels.get(k) == v for k, v in wanted.items()) for labels in ctx.agents.values()
        ):
            yield Finding(
                path,
                (*where, "selector"),
                f"selector {dict(wanted)} matches no agent declared in quicflow.yaml",
            )


def _pipeline(
    path: str,
    where: tuple[str | int, ...],
    pipeline: Mapping[str, Any],
    envs: Collection[str],
    cred: Any,
) -> Iterator[Finding]:
    stage_names: dict[str, int] = {}
    task_names: dict[str, tuple[int, int]] = {}
    names = expressions.STANDARD_NAMES
    for i, stage in enumerate(pipeline["stages"]):
        s_where = (*where, "stages", i)
        if stage["name"] in stage_names:
            yield Finding(path, (*s_where, "name"), f"duplicate stage name {stage['name']!r}")
        stage_names.setdefault(stage["name"], i)
        if "when" in stage:
            yield from _condition(path, (*s_where, "when"), stage["when"], names)
        for e, env in enumerate(stage.get("approval", {}).get("environments", [])):
            if env not in envs:
                yield Finding(
                    path,
                    (*s_where, "approval", "environments", e),
                    f"unknown environment {env!r}; environments: {_list(envs)}",
                )
        for j, task in enumerate(stage["tasks"]):
            t_where = (*s_where, "tasks", j)
            if task["name"] in task_names:
                si, ti = task_names[task["name"]]
                yield Finding(
                    path,
                    (*t_where, "name"),
                    f"duplicate task name {task['name']!r} (also stages[{si}].tasks[{ti}])",
                )
            task_names.setdefault(task["name"], (i, j))
            if ("uses" in task) == ("run" in task):
                yield Finding(path, t_where, "a task needs exactly one of 'uses' or 'run'")
            if "when" in task:
                yield from _condition(path, (*t_where, "when"), task["when"], names)
            yield from _variables(path, (*t_where, "variables"), task.get("variables"), cred)
            yield from _deploy(path, (*t_where, "deploy"), task.get("deploy"), cred)


def _condition(path: str, where: tuple[str | int, ...], text: str, names: Any) -> Iterator[Finding]:
    try:
        expressions.compile_expression(text, names)
    except expressions.ExpressionError as exc:
        column = getattr(exc, "column", 0)
        yield Finding(
            path,
            where,
            f"invalid condition: {exc}"
            + (f" (column {column})" if column and "column" not in str(exc) else ""),
        )


def _strategy(
    path: str, where: tuple[str | int, ...], strategy: Mapping[str, Any]
) -> Iterator[Finding]:
    kind = strategy.get("type", "rolling")
    for other in ("rolling", "canary", "blue_green"):
        if other != kind and other in strategy:
            yield Finding(
                path,
                (*where, other),
                f"'{other}' settings given but strategy type is {kind!r}",
                at_key=True,
            )
    rolling = strategy.get("rolling", {})
    if rolling:
        for problem in batches.rolling_problems(
            rolling.get("batch_size", 1), rolling.get("max_unavailable")
        ):
            yield Finding(path, (*where, "rolling"), problem)
    canary = strategy.get("canary", {})
    if "steps" in canary:
        for problem in batches.canary_step_problems(canary["steps"]):
            yield Finding(path, (*where, "canary", "steps"), problem)
    ports = strategy.get("blue_green", {}).get("ports", {})
    if ports.get("blue") is not None and ports.get("blue") == ports.get("green"):
        yield Finding(path, (*where, "blue_green", "ports"), "blue and green need different ports")


def _build(
    path: str, where: tuple[str | int, ...], build: Mapping[str, Any] | None, cred: Any
) -> Iterator[Finding]:
    if build:
        yield from cred(path, (*where, "registry_credential"), build.get("registry_credential"))


def _deploy(
    path: str, where: tuple[str | int, ...], deploy: Mapping[str, Any] | None, cred: Any
) -> Iterator[Finding]:
    if not deploy:
        return
    yield from cred(
        path,
        (*where, "container", "registry_credential"),
        deploy.get("container", {}).get("registry_credential"),
    )
    yield from cred(
        path,
        (*where, "kubernetes", "kubeconfig_credential"),
        deploy.get("kubernetes", {}).get("kubeconfig_credential"),
    )
    kind = deploy.get("type")
    for other in ("container", "kubernetes", "script", "git_pull"):
        if kind is not None and other != kind and other in deploy:
            yield Finding(
                path,
                (*where, other),
                f"'{other}' settings given but deploy type is {kind!r}",
                at_key=True,
            )


def _variables(
    path: str, where: tuple[str | int, ...], variables: Mapping[str, Any] | None, cred: Any
) -> Iterator[Finding]:
    for name, value in (variables or {}).items():
        if name.upper().startswith(RESERVED_PREFIX):
            yield Finding(
                path,
                (*where, name),
                f"variable {name!r} shadows a built-in ({RESERVED_PREFIX}* names are reserved)",
                at_key=True,
            )
        if isinstance(value, Mapping):
            yield from cred(path, (*where, name, "secret"), value.get("secret"))


def _callback(
    path: str,
    where: tuple[str | int, ...],
    cb: Mapping[str, Any],
    usable: frozenset[str],
    scope: str,
) -> Iterator[Finding]:
    secret = cb.get("secret")
    if secret is not None and secret not in usable:
        yield Finding(
            path,
            (*where, "secret"),
            f"unknown credential {secret!r}; {scope} scope may use: {_list(usable)}",
        )
    if "template" in cb:
        refused = templates.check(cb["template"])
        if refused:
            yield Finding(path, (*where, "template"), refused)
    if cb.get("format") and cb["type"] != "feishu":
        yield Finding(path, (*where, "format"), "'format' applies to feishu callbacks only")


def _unique(
    path: str, items: list[Mapping[str, Any]], key: str, where: tuple[str | int, ...], what: str
) -> Iterator[Finding]:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item.get(key)
        if value in seen:
            yield Finding(
                path,
                (*where, i, key),
                f"duplicate {what} {key} {value!r} (first at index {seen[value]})",
            )
        else:
            seen[value] = i


def _glob_problem(pattern: str) -> str | None:
    try:
        branches.compile_glob(pattern)
    except ValueError as exc:
        return f"invalid branch glob {pattern!r}: {str(exc).removeprefix(f'{pattern!r}: ')}"
    return None


def _zone_ok(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _list(names: Any) -> str:
    items = sorted(names)
    return ", ".join(items) if items else "(none)"
