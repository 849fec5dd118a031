"""The notifier: turns engine events into callback messages and alerts, and answers the API.

For each event from the bus:

1. every enabled callback that listens to the event's type — global ones and those of
   the event's project — gets a message (its template, or the default one);
2. every enabled alert rule the event matches (``rules``) raises an alert, or folds
   into the open one; a new immediate alert is sent to the rule's callbacks at once,
   a digest alert waits for its rule's window to close;
3. messages go to the outbox in the transaction that records the alert, and the
   deliverer sends them.

Idempotency keys are derived from what is being said, not from when it is said: the
same event handled twice, or the same digest flushed twice, yields the same key, and
the outbox keeps one. The desired state in force is read from the ``desired`` source
given to the constructor (``lambda: engine.desired``) or set with ``update``; events
that arrive before there is one are only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random as random_module
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from reconciler.alert import payloads, rules
from reconciler.alert.delivering import Client, Deliverer
from reconciler.engine.bus import EventBus
from reconciler.events import Event
from reconciler.gitops.model import AlertRule, Callback, DesiredState
from reconciler.log.masking import Masker
from reconciler.notifications import (
    AlertKey,
    AlertRecord,
    DeliveryRecord,
    Item,
    Message,
    NewAlert,
    RetryPolicy,
    State,
    iso_time,
)
from reconciler.rules import templates
from reconciler.store import alerts
from reconciler.store.database import Database
from reconciler.store.outbox import Outbox

_log = logging.getLogger(__name__)

#: How often (at most) waiting digests are checked, in seconds.
DIGEST_TICK = 5.0


class SecretValue(Protocol):
    """A credential as the manager hands it out."""

    def value(self, field_name: str | None = None) -> str:
        """The plain value of ``field_name`` (default: the main field)."""
        ...


class Credentials(Protocol):
    """What the notifier needs of ``reconciler.credential.manager.CredentialManager``."""

    def get(
        self, name: str, project: str | None, actor: str, source_ip: str | None = None
    ) -> SecretValue:
        """The credential ``name`` usable by ``project``, recording the use by ``actor``."""
        ...

    def secret_values(self, project: str | None) -> list[str]:
        """Every secret value ``project`` could obtain (for masking)."""
        ...


class Notifier:
    """Callbacks and alert rules, driven by the event bus, with a persistent outbox."""

    def __init__(
        self,
        database: Database,
        *,
        desired: Callable[[], DesiredState | None] | None = None,
        credentials: Credentials | None = None,
        client: Client | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        digest_tick: float = DIGEST_TICK,
        idle_wait: float | None = None,
    ):
        self.database = database
        self.outbox = Outbox(database)
        self.alerts = alerts.AlertLog(database)
        self._credentials = credentials
        self._clock = clock
        self._digest_tick = digest_tick
        self.deliverer = Deliverer(
            self.outbox,
            secrets=self._secret if credentials else None,
            client=client,
            clock=clock,
            sleep=sleep,
            random=random,
            idle_wait=idle_wait,
        )
        self._desired_source = desired
        self._desired: DesiredState | None = None
        self._maskers: dict[str | None, Masker] = {}
        self._maskers_for: DesiredState | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._digest_task: asyncio.Task[None] | None = None
        self._digest_wake = asyncio.Event()

    # ------------------------------------------------------------------ life cycle

    def update(self, desired: DesiredState) -> None:
        """Use the callbacks and rules of ``desired`` from now on (without a ``desired``
        source given to the constructor)."""
        self._desired = desired

    def _current(self) -> DesiredState | None:
        desired = self._desired_source() if self._desired_source else self._desired
        if desired is not self._maskers_for:
            # Credentials are reloaded with each config commit: rebuild maskers lazily.
            self._maskers.clear()
            self._maskers_for = desired
        return desired

    async def start(self, bus: EventBus | None = None) -> None:
        """Subscribe to ``bus`` (if given), resume the outbox and the digest timer."""
        if bus is not None and self._unsubscribe is None:
            self._unsubscribe = bus.subscribe(self.handle)
        await self.deliverer.start()
        if self._digest_task is None:
            self._digest_task = asyncio.get_running_loop().create_task(self._digest_loop())

    async def close(self) -> None:
        """Unsubscribe and stop; whatever is pending stays in the outbox for the next start."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._digest_task is not None:
            self._digest_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._digest_task
            self._digest_task = None
        await self.deliverer.close()

    async def drain(self, within: float = 0.0) -> None:
        """Wait until every notification due within ``within`` seconds was delivered or
        given up (tests, shutdown)."""
        await self.deliverer.drain(within)

    # ------------------------------------------------------------------ events

    async def handle(self, event: Event) -> None:
        """Notify the callbacks that listen to ``event`` and raise the alerts it matches."""
        if event.dropped:
            _log.warning("the event bus dropped %d events before this one", event.dropped)
        desired = self._current()
        if desired is None:
            _log.info("no desired state yet; %s not notified", event.type)
            return
        now = self._clock()
        masker = self._masker(event.project or None)
        queued = False
        for callback in self._listeners(desired, event):
            variables = templates.variables(event, public_url=desired.settings.public_url)
            key = _event_key(event, callback)
            text = self._render(callback, templates.DEFAULT_EVENT_TEMPLATE, variables, masker)
            message = self._message(
                callback, key, payloads.KIND_EVENT, variables, text, event.data, masker
            )
            queued |= self.outbox.enqueue(message, now)
        env = desired.environment(event.project, event.env)
        matched = rules.matching_rules(
            rules.rules_in_force(desired, event.project or None), event, env.tier if env else ""
        )
        for rule in matched:
            queued |= self._raise(desired, rule, event, masker, now)
        if queued:
            self.deliverer.wake()

    def _raise(
        self, desired: DesiredState, rule: AlertRule, event: Event, masker: Masker, now: float
    ) -> bool:
        rid = rules.rule_id(rule)
        key = AlertKey(rid, event.project, event.env, event.version)
        label = rules.RULE_LABELS.get(rule.event, rule.event.replace("_", " "))
        title = masker.mask(f"{label}: {_where(event.project, event.env, event.version)}")
        with self.database.transaction() as conn:
            latest = self.alerts.latest(key, conn)
            fold, outcome = rules.fold(
                latest.fold if latest else None, event.run_id, now, rules.window_of(rule)
            )
            if latest is not None and outcome is rules.FoldOutcome.REPEAT:
                self.alerts.fold_into(conn, latest.id, fold, masker.mask(event.error), now)
                return False
            if not outcome.is_new:
                return False
            alert = {"id": None, "rule": rid, "title": title, "severity": rule.severity, "count": 1}
            variables = templates.variables(
                event, public_url=desired.settings.public_url, severity=rule.severity, alert=alert
            )
            message = templates.render(templates.DEFAULT_ALERT_TEMPLATE, variables, masker=masker)
            record_id = self.alerts.insert(
                conn,
                NewAlert(
                    rule=rid,
                    rule_event=rule.event,
                    event=event.type.value,
                    mode=rule.mode,
                    project=event.project,
                    env=event.env,
                    version=event.version,
                    severity=rule.severity,
                    title=title,
                    message=message,
                    error=masker.mask(event.error),
                    run_id=event.run_id,
                ),
                now,
            )
            if rule.mode == "digest":
                self._digest_wake.set()
                return False
            variables["alert"]["id"] = record_id
            callbacks = self._rule_callbacks(desired, rule)
            for callback in callbacks:
                text = self._render(callback, templates.DEFAULT_ALERT_TEMPLATE, variables, masker)
                msg = self._message(
                    callback,
                    f"alert-{record_id}-{_scoped(callback)}",
                    payloads.KIND_ALERT,
                    variables,
                    text,
                    event.data,
                    masker,
                    alert_id=record_id,
                )
                self.outbox.enqueue(msg, now, conn)
            self.alerts.mark_sent(conn, [record_id], bool(callbacks), now)
        return bool(callbacks)

    # ------------------------------------------------------------------ digests

    async def flush_digests(self) -> int:
        """Send every digest whose window has closed; return how many were sent."""
        desired = self._current()
        if desired is None:
            return 0
        now = self._clock()
        by_id = {rules.rule_id(r): r for r in rules.rules_in_force(desired)}
        windows = {rid: rules.window_of(r) for rid, r in by_id.items()}
        sent = 0
        for digest in rules.due_digests(self.alerts.waiting(), windows, now):
            rule = by_id.get(digest.rule)
            listed = self.alerts.get_many(digest.records)
            callbacks = self._rule_callbacks(desired, rule) if rule and rule.enabled else []
            if not callbacks:
                _log.warning("digest of rule %s has no enabled callback; dropped", digest.rule)
            variables = _digest_variables(digest, rule, listed, desired.settings.public_url)
            masker = self._masker(None, {r.project for r in listed})
            text = templates.render(templates.DEFAULT_DIGEST_TEMPLATE, variables, masker=masker)
            with self.database.transaction() as conn:
                for callback in callbacks:
                    key = f"digest-{digest.rule}-{digest.records[0]}-{_scoped(callback)}"
                    msg = self._message(
                        callback, key, payloads.KIND_DIGEST, variables, text, {}, masker
                    )
                    self.outbox.enqueue(msg, now, conn)
                self.alerts.mark_sent(conn, digest.records, bool(callbacks), now)
            sent += bool(callbacks)
        if sent:
            self.deliverer.wake()
        return sent

    async def _digest_loop(self) -> None:
        while True:
            try:
                await self.flush_digests()
                windows = {}
                desired = self._current()
                if desired is not None:
                    windows = {
                        rules.rule_id(r): rules.window_of(r) for r in rules.rules_in_force(desired)
                    }
                closes = rules.next_digest_at(self.alerts.waiting(), windows)
            except Exception:  # noqa: BLE001 - keep the timer alive; the next tick retries
                _log.exception("digest flush failed")
                closes = None
            wait = self._digest_tick
            if closes is not None:
                wait = min(max(closes - self._clock(), 0.005), self._digest_tick)
            self._digest_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._digest_wake.wait()

    # ------------------------------------------------------------------ API

    def list_rules(self, desired: DesiredState | None = None) -> list[dict[str, Any]]:
        """The alert rules in force (``GET /api/release/alerts/rules``)."""
        state = desired or self._current()
        if state is None:
            return []
        return [
            {
                "id": rules.rule_id(r),
                "name": r.name,
                "project": r.project,
                "event": r.event,
                "matches": sorted(t.value for t in rules.RULE_EVENTS.get(r.event, ())),
                "environment": r.environment,
                "severity": r.severity,
                "mode": r.mode,
                "window": rules.window_of(r),
                "enabled": r.enabled,
                "callbacks": list(r.callbacks),
            }
            for r in rules.rules_in_force(state)
        ]

    def history(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        project: str | None = None,
        rule: str | None = None,
    ) -> list[AlertRecord]:
        """Alert records, newest first (``GET /api/release/alerts/history``)."""
        return self.alerts.history(limit, offset, project=project, rule=rule)

    def deliveries(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        callback: str | None = None,
        key: str | None = None,
        project: str | None = None,
    ) -> list[DeliveryRecord]:
        """Delivery records, one per attempt, newest first."""
        return self.outbox.deliveries(limit, offset, callback=callback, key=key, project=project)

    def pending(self, limit: int = 100) -> list[Item]:
        """Notifications not yet delivered (nor given up)."""
        return self.outbox.items(State.PENDING, limit)

    # ------------------------------------------------------------------ helpers

    def _listeners(self, desired: DesiredState, event: Event) -> list[Callback]:
        own = desired.projects.get(event.project)
        candidates = (*desired.callbacks, *(own.callbacks if own else ()))
        return [c for c in candidates if c.enabled and event.type.value in c.events]

    def _rule_callbacks(self, desired: DesiredState, rule: AlertRule) -> list[Callback]:
        scopes: list[Iterable[Callback]] = [desired.callbacks]
        if rule.project is not None and rule.project in desired.projects:
            # A project's own callback shadows a global one of the same name.
            scopes.insert(0, desired.projects[rule.project].callbacks)
        found: list[Callback] = []
        for name in rule.callbacks:
            match = next((c for scope in scopes for c in scope if c.name == name), None)
            if match is None:
                _log.warning("alert rule %s names unknown callback %s", rules.rule_id(rule), name)
            elif match.enabled:
                found.append(match)
        return found

    def _masker(self, project: str | None, more: Iterable[str] = ()) -> Masker:
        if self._credentials is None:
            return Masker()
        named = sorted({p for p in (project, *more) if p})
        wanted: list[str | None] = [*named] or [None]
        if len(wanted) == 1:
            cached = self._maskers.get(wanted[0])
            if cached is None:
                cached = Masker(self._credentials.secret_values(wanted[0]))
                self._maskers[wanted[0]] = cached
            return cached
        values: set[str] = set()
        for name in wanted:
            values.update(self._credentials.secret_values(name))
        return Masker(values)

    def _secret(self, message: Message) -> str:
        assert self._credentials is not None
        actor = f"callback:{message.scope + '/' if message.scope else ''}{message.callback}"
        return self._credentials.get(message.secret or "", message.scope or None, actor).value()

    def _render(
        self, callback: Callback, default: str, variables: Mapping[str, Any], masker: Masker
    ) -> str:
        if callback.template:
            try:
                return templates.render(callback.template, variables, masker=masker)
            except templates.TemplateRefused as exc:
                # A broken template must not silence the notification: send the default
                # text and say why, so the operator fixes the template.
                _log.warning("callback %s: %s", callback.name, exc)
                text = templates.render(default, variables, masker=masker)
                return templates.truncate(
                    f"{text}\n(template of callback {callback.name} refused: {masker.mask(str(exc))})",
                    templates.DEFAULT_LIMIT,
                )
        return templates.render(default, variables, masker=masker)

    def _message(
        self,
        callback: Callback,
        key: str,
        kind: str,
        variables: Mapping[str, Any],
        text: str,
        data: Mapping[str, Any],
        masker: Masker,
        alert_id: int | None = None,
    ) -> Message:
        if callback.type == "feishu":
            links = variables.get("links") or {}
            body: dict[str, Any] = payloads.feishu_body(
                callback.format,
                title=payloads.title(variables),
                text=text,
                link=links.get("run") or links.get("status_page") or "",
                severity=str(variables.get("severity") or ""),
            )
        else:
            body = payloads.webhook_body(key, kind, variables, text=text, data=data)
        # Mask the serialised body once more: ``data`` and titles never went through a
        # template, and the masker knows the JSON-escaped forms of multi-line secrets.
        body_text = masker.mask(json.dumps(body, ensure_ascii=False, default=str))
        return Message(
            key=key,
            callback=callback.name,
            scope=callback.project or "",
            channel=callback.type,
            url=callback.url,
            body=body_text,
            policy=RetryPolicy.from_mapping(callback.retry),
            secret=callback.secret,
            event=str(variables.get("event") or ""),
            alert_id=alert_id,
        )


def _scoped(callback: Callback) -> str:
    return f"{callback.project}/{callback.name}" if callback.project else callback.name


def _where(project: str, env: str, version: str) -> str:
    text = project or "-"
    if env:
        text += f"/{env}"
    if version:
        text += f" {version}"
    return text


def _event_key(event: Event, callback: Callback) -> str:
    # What the event says (its time included) and who hears it: the same event handled
    # twice gives the same key, two failures a second apart give two.
    material = json.dumps([event.as_dict(), _scoped(callback)], sort_keys=True, default=str)
    return "event-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def _digest_variables(
    digest: rules.Digest,
    rule: AlertRule | None,
    listed: list[AlertRecord],
    public_url: str | None,
) -> dict[str, Any]:
    rule_event = rule.event if rule else (listed[0].rule_event if listed else "")
    severity = rule.severity if rule else (listed[0].severity if listed else "")
    label = rules.RULE_LABELS.get(rule_event, rule_event.replace("_", " "))
    entries = [
        {
            "id": r.id,
            "project": r.project,
            "env": r.env,
            "version": r.version,
            "error": r.error,
            "count": r.count,
            "run": r.run_id,
            "title": r.title,
            "created": iso_time(r.created_at),
        }
        for r in listed
    ]
    links = templates.links(public_url, "")
    project = rule.project if rule and rule.project else ""
    return {
        "event": rule_event,
        "at": iso_time(digest.closes_at),
        "project": project,
        "env": "",
        "version": "",
        "stage": "",
        "task": "",
        "target": "",
        "error": "",
        "status": f"{label} digest",
        "severity": severity,
        "trigger": "",
        "committer": "",
        "run": {"id": "", "state": "", "trigger": "", "url": ""},
        "links": links,
        "alert": {
            "id": None,
            "rule": digest.rule,
            "title": f"{label} digest",
            "severity": severity,
            "count": len(entries),
            "window_start": iso_time(digest.opened_at),
            "window_end": iso_time(digest.closes_at),
        },
        "entries": entries,
    }
