"""Alert rules: which rules an event matches, folding repeats, and when a digest is due.

Pure: no I/O, no clock (``at`` and ``now`` are epoch seconds passed in).

- A rule's ``event`` names a kind of trouble, which several engine events can report:
  ``deploy_failed`` is a failed run or deploy step, ``timeout`` a task or deploy that
  timed out (see ``RULE_EVENTS``).
- A rule's ``environment`` is ``all``, an environment name (``prod``) or a tier
  (``prod``, ``staging``, ``test``, ``dev``): an environment matches by name or tier.
- Repeats of one alert — same rule, project, environment and version — inside the
  rule's window fold into the first with a count. Two events of the same run (its
  ``deploy_failed`` and then its ``run_failed``) are one occurrence, not two.
- A digest rule's window opens with its oldest unsent alert and closes ``window``
  seconds later; then one message lists every alert of that window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from reconciler.events import Event, EventType
from reconciler.gitops.model import AlertRule, DesiredState
from reconciler.notifications import Fold, Waiting

#: Window used for folding (and digests) when a rule sets none: the seed's 10 minutes.
DEFAULT_WINDOW = 600.0

RULE_EVENTS: Mapping[str, frozenset[EventType]] = {
    "deploy_failed": frozenset({EventType.RUN_FAILED, EventType.DEPLOY_FAILED}),
    "canary_failed": frozenset({EventType.CANARY_FAILED}),
    "build_failed": frozenset({EventType.BUILD_FAILED}),
    "timeout": frozenset({EventType.TASK_TIMED_OUT, EventType.DEPLOY_TIMEOUT}),
    "rolled_back": frozenset({EventType.ROLLED_BACK}),
    "approval_requested": frozenset({EventType.APPROVAL_REQUESTED}),
}

#: How an alert of each rule event reads in a title.
RULE_LABELS: Mapping[str, str] = {
    "deploy_failed": "deploy failed",
    "canary_failed": "canary failed",
    "build_failed": "build failed",
    "timeout": "timed out",
    "rolled_back": "rolled back",
    "approval_requested": "approval requested",
}


def rule_id(rule: AlertRule) -> str:
    """A rule's unique id: its name, prefixed by its project for project rules."""
    return rule.name if rule.project is None else f"{rule.project}/{rule.name}"


def window_of(rule: AlertRule) -> float:
    """The rule's folding and digest window in seconds."""
    return rule.window if rule.window else DEFAULT_WINDOW


def environment_matches(selector: str, env: str, tier: str = "") -> bool:
    """Whether a rule's ``environment`` selects environment ``env`` (of ``tier``)."""
    if selector == "all":
        return True
    return bool(env) and selector in (env, tier)


def rules_in_force(desired: DesiredState, project: str | None = None) -> tuple[AlertRule, ...]:
    """Global rules, then ``project``'s own (all projects' when ``project`` is None)."""
    if project is None:
        own = tuple(
            r for name in sorted(desired.projects) for r in desired.projects[name].alert_rules
        )
    else:
        found = desired.projects.get(project)
        own = found.alert_rules if found else ()
    return (*desired.alert_rules, *own)


def matching_rules(
    rules: Iterable[AlertRule], event: Event, tier: str = ""
) -> tuple[AlertRule, ...]:
    """The enabled rules that ``event`` (in an environment of ``tier``) triggers."""
    return tuple(
        rule
        for rule in rules
        if rule.enabled
        and (rule.project is None or rule.project == event.project)
        and event.type in RULE_EVENTS.get(rule.event, ())
        and environment_matches(rule.environment, event.env, tier)
    )


class FoldOutcome(StrEnum):
    """What an occurrence did to the alert it belongs to."""

    NEW = "new"  # no open alert: a new one starts (and is notified)
    REPEAT = "repeat"  # folded into the open alert: its count went up
    SAME_RUN = "same_run"  # another event of a run already counted: nothing changes

    @property
    def is_new(self) -> bool:
        """Whether a new alert starts (and is notified)."""
        return self is FoldOutcome.NEW


def fold(previous: Fold | None, run_id: str, at: float, window: float) -> tuple[Fold, FoldOutcome]:
    """Fold one occurrence (of run ``run_id`` at ``at``) into the alert ``previous``."""
    if previous is None or at >= previous.first_at + window or at < previous.first_at:
        runs = frozenset({run_id}) if run_id else frozenset()
        return Fold(at, 1, runs), FoldOutcome.NEW
    if run_id and run_id in previous.run_ids:
        return previous, FoldOutcome.SAME_RUN
    runs = previous.run_ids | {run_id} if run_id else previous.run_ids
    return Fold(previous.first_at, previous.count + 1, runs), FoldOutcome.REPEAT


@dataclass(frozen=True, slots=True)
class Digest:
    """One digest message to send: a rule's window and the alerts it lists, oldest first."""

    rule: str
    opened_at: float
    closes_at: float
    records: tuple[int, ...]


def due_digests(
    waiting: Iterable[Waiting], windows: Mapping[str, float], now: float
) -> tuple[Digest, ...]:
    """The digests whose window has closed by ``now``, one per rule.

    Alerts created after their rule's window closed wait for the next window.
    """
    by_rule: dict[str, list[Waiting]] = {}
    for item in waiting:
        by_rule.setdefault(item.rule, []).append(item)
    due: list[Digest] = []
    for rule, items in sorted(by_rule.items()):
        items.sort(key=lambda w: (w.created_at, w.record))
        opened = items[0].created_at
        closes = opened + windows.get(rule, DEFAULT_WINDOW)
        if now < closes:
            continue
        listed = tuple(w.record for w in items if w.created_at < closes)
        due.append(Digest(rule, opened, closes, listed))
    return tuple(due)


def next_digest_at(waiting: Iterable[Waiting], windows: Mapping[str, float]) -> float | None:
    """When the earliest open digest window closes (None: nothing is waiting)."""
    opened: dict[str, float] = {}
    for item in waiting:
        opened[item.rule] = min(opened.get(item.rule, item.created_at), item.created_at)
    closes = [at + windows.get(rule, DEFAULT_WINDOW) for rule, at in opened.items()]
    return min(closes) if closes else None
