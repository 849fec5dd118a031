"""Plans and history rendered for people (text), pull requests (Markdown) and tools (JSON).

The JSON form is a stable contract (documented in docs/plan-json.md): keys are only
ever added, never renamed, and ``format_version`` changes if that promise must break.
Output is deterministic for the same inputs. Pure: returns strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.gitops.planning import Action, ActionKind, Plan
from reconciler.gitops.policy import PolicyReport

FORMAT_VERSION = 1
_SYMBOL = {
    ActionKind.DEPLOY: "~",
    ActionKind.HOLD: "!",
    ActionKind.NONE: " ",
    ActionKind.ORPHAN: "?",
}


def plan_json(
    plan: Plan,
    policy: PolicyReport | None = None,
    base: str | None = None,
    *,
    applies: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The plan as JSON; ``applies`` adds, per ``project/env``, what the deploy applies."""
    actions = []
    for a in plan.actions:
        entry = a.as_dict()
        if applies and a.key in applies:
            entry["applies"] = list(applies[a.key])
        actions.append(entry)
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "commit": plan.commit,
        "base": base,
        "state_commit": plan.state_commit,
        "has_changes": plan.has_changes,
        "summary": dict(plan.counts),
        "actions": actions,
    }
    if policy is not None:
        data["policy"] = {
            "allowed": policy.allowed,
            "requirements": [r.as_dict() for r in policy.requirements],
            "authors": [a.as_dict() for a in policy.authors],
            "problem": policy.problem or None,
        }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _describe(a: Action) -> str:
    if a.kind is ActionKind.DEPLOY:
        change = (
            f"{a.from_version or '(nothing)'} → {a.to_version}"
            if a.from_version != a.to_version
            else f"{a.to_version} (redeploy)"
        )
        where = (
            f"{len(a.targets)} target{'s' if len(a.targets) != 1 else ''}"
            if a.targets
            else "no targets"
        )
        return f"deploy {change} · {a.strategy} · {a.deploy_type} · {where}"
    if a.kind is ActionKind.HOLD:
        return f"hold at {a.from_version or '(nothing)'} · {a.detail}"
    if a.kind is ActionKind.ORPHAN:
        return f"orphaned {a.from_version} · {a.detail}"
    return f"unchanged at {a.to_version}"


def plan_text(
    plan: Plan,
    policy: PolicyReport | None = None,
    verbose: bool = False,
    *,
    applies: Mapping[str, Sequence[str]] | None = None,
) -> str:
    lines = [
        f"Plan for config commit {plan.commit[:10]}"
        + (
            f" against state {plan.state_commit[:10]}"
            if plan.state_commit
            else " (nothing deployed yet)"
        )
    ]
    shown = [a for a in plan.actions if verbose or a.kind is not ActionKind.NONE]
    for a in shown:
        flag = " [protected]" if a.protected else ""
        reason = f" ({a.reason.value.replace('_', ' ')})" if a.kind is not ActionKind.NONE else ""
        lines.append(f"  {_SYMBOL[a.kind]} {a.key}{flag}: {_describe(a)}{reason}")
        if a.kind is ActionKind.DEPLOY and a.detail:
            lines.append(f"      {a.detail}")
        for line in (applies or {}).get(a.key, ()) if a.kind is ActionKind.DEPLOY else ():
            lines.append(f"      {line}")
    if not shown:
        lines.append("  no changes")
    lines.append(_summary(plan))
    if policy is not None:
        lines.extend(_policy_text(policy))
    return "\n".join(lines) + "\n"


def plan_markdown(
    plan: Plan,
    policy: PolicyReport | None = None,
    *,
    applies: Mapping[str, Sequence[str]] | None = None,
) -> str:
    lines = [
        "### QUIC-Flow plan",
        "",
        f"Config commit `{plan.commit[:10]}`"
        + (
            f", deployed state `{plan.state_commit[:10]}`."
            if plan.state_commit
            else ", nothing deployed yet."
        ),
        "",
    ]
    changes = [a for a in plan.actions if a.kind is not ActionKind.NONE]
    if changes:
        lines += [
            "| | project/env | action | from | to | strategy | targets | reason |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in changes:
            lock = " 🔒" if a.protected else ""
            lines.append(
                f"| {_SYMBOL[a.kind].strip() or '·'} | `{a.key}`{lock} | {a.kind.value} | "
                f"{_md(a.from_version)} | {_md(a.to_version)} | {a.strategy} | {len(a.targets)} | "
                f"{a.reason.value.replace('_', ' ')}{(': ' + _cell(a.detail)) if a.detail else ''} |"
            )
    else:
        lines.append("No changes: every environment matches its deployed release.")
    for key, described in sorted((applies or {}).items()):
        lines += ["", f"`{key}` applies:", ""] + [f"- {_cell(line)}" for line in described]
    lines += ["", _summary(plan)]
    if policy is not None:
        lines += ["", "#### Permissions", ""]
        if policy.problem:
            lines += [f"❌ {_cell(policy.problem)}", ""]
        if not policy.requirements:
            lines.append("This change needs no project role.")
        else:
            lines += ["| project/env | change | roles allowed |", "|---|---|---|"]
            for r in policy.requirements:
                where = f"{r.project}/{r.env}" if r.env else r.project
                lines.append(
                    f"| `{where}`{' 🔒' if r.protected else ''} | {_cell(r.what)} | {', '.join(r.roles)} |"
                )
        if policy.authors:
            lines += ["", "| author | user | allowed |", "|---|---|---|"]
            for author in policy.authors:
                mark = "✅" if author.allowed else "❌ " + _cell("; ".join(author.missing))
                lines.append(
                    f"| {_cell(author.name)} <{author.email}> | {author.user or '(unknown)'} | {mark} |"
                )
    return "\n".join(lines) + "\n"


def _summary(plan: Plan) -> str:
    c = plan.counts
    return (
        f"{c.get('deploy', 0)} to deploy, {c.get('hold', 0)} held, {c.get('none', 0)} unchanged"
        + (f", {c['orphan']} orphaned" if c.get("orphan") else "")
        + "."
    )


def _policy_text(policy: PolicyReport) -> Iterable[str]:
    yield "Permissions this change needs:"
    if policy.problem:
        yield f"  NOT allowed: {policy.problem}"
    if not policy.requirements:
        yield "  none"
    for r in policy.requirements:
        where = f"{r.project}/{r.env}" if r.env else r.project
        yield f"  {where}{' [protected]' if r.protected else ''}: {r.what} — {', '.join(r.roles)}"
    for a in policy.authors:
        state = "allowed" if a.allowed else "NOT allowed"
        yield f"  author {a.name} <{a.email}> ({a.user or 'not a user'}): {state}"
        for m in a.missing:
            yield f"    - {m}"


def _md(value: str | None) -> str:
    return f"`{value}`" if value else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
