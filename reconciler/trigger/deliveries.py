"""Webhook deliveries: what one delivery leads to, acted on once and recorded.

``WebhookDeliveries.handle`` takes one delivery to a declared trigger — its id, the
headers, the raw body, the source address and ``now`` — and ``handle_config`` one to
the config repo's own webhook; both answer a plain ``DeliveryResult`` (the status code
it maps onto, a code, the message, the trigger record's id). In order, each refusal
leaving a trigger record:

1. a trigger and source address past its refusal limit → 429 with ``Retry-After``,
   before anything is verified (``refusals``: per trigger and source, a window's
   refusals after the first few are counted in one trigger record, not one each);
2. a body over the limit (the caller read at most ``body_limit`` bytes and passes
   None) → 413;
3. signature / token / timestamp checked by ``signatures`` (constant-time; Gitee
   timestamps further than ``max_skew`` from ``now`` are stale) → 401 naming the header
   at fault; the secret is the trigger's credential, read through the
   ``CredentialManager`` (an audited use) and kept in memory for at most a minute per
   trigger and config commit, so forged floods cannot flood the audit log.
   An **unknown** trigger id is answered exactly as a declared one whose secret the
   caller does not know (verified against a random secret, as a provider chosen by a
   keyed hash of the id), so unauthenticated callers cannot tell which names exist;
   it leaves no record (nothing to attribute it to);
4. the delivery id is claimed with the SHA-256 of its body; a repeat with the same body
   is acknowledged (200, ``skipped``) and not acted on again, the same id with another
   body is refused (401: a captured Gitee token/timestamp pair carrying a forged
   body). When the action fails the claim is released, so the provider's "redeliver"
   can retry it;
5. the payload is parsed by ``pushes`` (GitHub's form-encoded deliveries from their
   ``payload`` field); other events (``ping``, merge requests) and deleted refs are
   skipped;
6. filters: the event kind must be in the trigger's ``events``; a branch push must match
   one of ``branches`` (globs; none listed = every branch; tags are not filtered);
7. the action: ``deploy`` → ``engine.deploy_or_queue`` of the **tag name** (tag
   events) or the **commit id** (branch pushes), which the engine commits to the config
   repo (or pins) so the next poll keeps it; ``reconcile`` → ``engine.reconcile_now``;
   ``build`` → a build of the pushed tag or commit on the engine's Builder with the
   build settings of ``target_env`` (skipped when the engine has no Builder). For
   providers that do not sign the body (Gitee), the pushed commit must first be found
   in the project's app repo (``commits``), else the delivery is refused (422).

A push that arrives while a deploy of its environment runs is **queued** behind it,
newest wins: its record says ``queued`` and is updated when the engine decides — to
``success`` naming the run it became, ``superseded`` when a newer push (or Git) took
its place, or ``failed`` (the claim is then released, so a redelivery may try again).

Results: 202 when a run (or build) started or the deploy was queued, 200 when skipped,
400 for a payload that is not what the provider documents, 422 when the engine refused
the action, 429 while rate-limited, 503 when it asked to retry later, 500 for anything
else.

What this module must not do: see HTTP (it imports no web framework; headers come in
as a mapping and the body as bytes, and ``reconciler.api.webhooks`` turns the result
into a response) or read the wall clock (``now`` is a parameter).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from reconciler import errors
from reconciler.builder.building import Builder, BuildError
from reconciler.credential.manager import CredentialManager
from reconciler.engine import image_builds, queueing
from reconciler.engine.control import EngineControl
from reconciler.gitops import model
from reconciler.rules import branches
from reconciler.runs import Trigger
from reconciler.trigger import commits, pushes, refusals, signatures

_log = logging.getLogger(__name__)

CONFIG_TRIGGER_ID = "config"
SECRET_CACHE_SECONDS = 60.0

# What a delivery led to, as its trigger record says.
SUCCESS = "success"
FAILED = "failed"
SKIPPED = "skipped"
QUEUED = "queued"
SUPERSEDED = "superseded"


class DeliveryRecords(Protocol):
    """Where deliveries are recorded and their ids claimed (the trigger records)."""

    def add(
        self, at: datetime, trigger_id: str, status: str, reason: str = "", **fields: str
    ) -> int:
        """Append one record; returns its id."""
        ...

    def claim_and_add(
        self,
        at: datetime,
        trigger_id: str,
        claim: str,
        status: str,
        reason: str = "",
        body_sha256: str = "",
        **fields: str,
    ) -> tuple[str, int]:
        """Claim delivery id ``claim`` and record the outcome at once: (reason, id)."""
        ...

    def claim_delivery(
        self, trigger_id: str, delivery_id: str, at: datetime, body_sha256: str = ""
    ) -> bool:
        """Take a delivery id; False when it was seen before."""
        ...

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None:
        """Forget a delivery id so a redelivery is acted on."""
        ...

    def update(self, record_id: int, status: str, reason: str, run_id: str = "") -> None:
        """Say what a queued delivery led to after all."""
        ...

    def tally(self, record_id: int, occurrences: int, last_at: datetime, reason: str) -> None:
        """Set how many refusals an aggregate record stands for."""
        ...

    def claimed_body(self, trigger_id: str, delivery_id: str) -> str | None:
        """The body digest a taken delivery id came with, None when it is not taken."""
        ...


class CommitCheck(Protocol):
    """Whether a pushed commit exists in the project's app repo ('' yes, else why not)."""

    def __call__(self, project: model.Project, commit: str, tag: str | None) -> Awaitable[str]: ...


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The answer to one delivery, free of HTTP: the caller turns it into a response.

    ``code`` is the record status (``success``, ``skipped``) when ``accepted``, else the
    error code; ``field`` names the header or payload field at fault.
    """

    status: int
    code: str
    message: str
    record_id: int | None = None
    field: str | None = None
    run_id: str | None = None
    build_id: str | None = None
    retry_after: float | None = None  # 429: seconds until the source may try again

    @property
    def accepted(self) -> bool:
        """Whether the delivery was taken (acted on or skipped) rather than refused."""
        return self.status < 400


def find_trigger(
    desired: model.DesiredState | None, trigger_id: str
) -> model.WebhookTrigger | None:
    """The declared webhook trigger with ``trigger_id`` (``project.name``)."""
    if desired is None:
        return None
    project_name, _, _ = trigger_id.partition(".")
    project = desired.projects.get(project_name)
    if project is None:
        return None
    return next((w for w in project.webhooks if w.id == trigger_id), None)


@dataclass(frozen=True, slots=True)
class _Hook:
    """What the delivery path needs of a trigger (a declared one or the config repo's)."""

    id: str
    project: str | None
    source: str
    secret: str
    action: str
    branches: tuple[str, ...]
    events: tuple[str, ...]
    target_env: str | None
    enabled: bool
    declared: bool = True  # False: an unknown id, answered alike and never recorded


class WebhookDeliveries:
    """The delivery path, bound to an engine, the trigger records and the credentials."""

    def __init__(
        self,
        engine: EngineControl,
        records: DeliveryRecords,
        credentials: CredentialManager | None,
        body_limit: int,
        max_skew: timedelta = signatures.DEFAULT_MAX_SKEW,
        counter: refusals.RefusalCounter | None = None,
        commit_check: CommitCheck | None = None,
    ):
        self.engine = engine
        self.records = records
        self.credentials = credentials
        self.body_limit = body_limit
        self.max_skew = max_skew
        self.refusals = counter or refusals.RefusalCounter()
        self.commit_check = commit_check
        self._secrets: dict[tuple[str, str | None, str], tuple[str, float]] = {}
        # Unknown ids are verified against secrets nobody knows, as a provider a keyed
        # hash picks: the key is this process's own, so the choice cannot be predicted.
        self._unknown_key = secrets.token_bytes(32)

    async def handle(
        self,
        trigger_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        address: str,
        now: datetime,
    ) -> DeliveryResult:
        """One delivery to the declared trigger ``trigger_id``; ``body`` None: over the limit."""
        declared = find_trigger(self.engine.desired, trigger_id)
        if declared is None:
            return await self._deliver(self._unknown(trigger_id), headers, body, address, now)
        hook = _Hook(
            declared.id,
            declared.project,
            declared.source,
            declared.secret,
            declared.action,
            declared.branches,
            declared.events,
            declared.target_env,
            declared.enabled,
        )
        return await self._deliver(hook, headers, body, address, now)

    async def handle_config(
        self, headers: Mapping[str, str], body: bytes | None, address: str, now: datetime
    ) -> DeliveryResult:
        """One delivery to the config repo's own webhook (a push to its branch reconciles)."""
        desired = self.engine.desired
        hook_config = desired.settings.config_webhook if desired is not None else None
        if desired is None or not hook_config:
            return DeliveryResult(
                404, "not_found", "no config_webhook is configured in quicflow.yaml"
            )
        hook = _Hook(
            CONFIG_TRIGGER_ID,
            None,
            str(hook_config["source"]),
            str(hook_config["secret"]),
            "reconcile",
            (desired.settings.branch,),
            ("push",),
            None,
            True,
        )
        return await self._deliver(hook, headers, body, address, now)

    def _unknown(self, trigger_id: str) -> _Hook:
        """A stand-in for an undeclared trigger id: verifies nothing, records nothing."""
        digest = hmac.new(self._unknown_key, trigger_id.encode(), hashlib.sha256).digest()
        providers = list(signatures.Provider)
        return _Hook(
            trigger_id[:200],
            None,
            providers[digest[0] % len(providers)].value,
            "",
            "deploy",
            (),
            (),
            None,
            True,
            declared=False,
        )

    async def _deliver(
        self,
        hook: _Hook,
        headers: Mapping[str, str],
        body: bytes | None,
        address: str,
        now: datetime,
    ) -> DeliveryResult:
        base = {"project": hook.project or "", "source": hook.source, "source_ip": address}

        def record(status: str, reason: str = "", **fields: str) -> int:
            if not hook.declared:
                return 0
            return self.records.add(now, hook.id, status, reason, **base, **fields)

        key = (hook.id, address)
        wait = self.refusals.retry_after(key)
        if wait is not None:
            self._refused(hook, key, now, "rate-limited", base, {})
            return DeliveryResult(
                429,
                "too_many_refusals",
                f"too many refused deliveries from this address; retry in {wait:.0f} s",
                retry_after=wait,
            )
        if body is None:
            reason = f"body larger than {self.body_limit} bytes"
            self._refused(hook, key, now, reason, base, {})
            return DeliveryResult(413, "body_too_large", reason)
        if self.credentials is None:
            record(FAILED, "the server has no credential manager to read webhook secrets")
            return DeliveryResult(503, "not_configured", "webhook secrets are not available")
        try:
            secret = self._secret(hook, address) if hook.declared else self._unknown_key.hex()
        except (errors.QuicFlowError, KeyError) as error:
            record(FAILED, f"secret credential {hook.secret!r}: {error}")
            return DeliveryResult(
                500, "secret_unavailable", f"the secret of webhook {hook.id} cannot be read"
            )
        try:
            delivery = signatures.verify(
                hook.source, headers, body, secret, now=now, max_skew=self.max_skew
            )
            digest = hashlib.sha256(body).hexdigest()
            _bound_to_body(self.records, hook.id, delivery, digest)
        except signatures.WebhookRejected as rejected:
            self._refused(hook, key, now, str(rejected), base, {"event": _event_header(headers)})
            return DeliveryResult(401, "webhook_rejected", rejected.reason, field=rejected.header)
        base.update(event=delivery.event, delivery_id=delivery.delivery_id)
        if not hook.enabled:
            record(SKIPPED, "trigger is disabled")
            return DeliveryResult(200, SKIPPED, "trigger is disabled")
        try:
            push = pushes.parse_push(
                delivery.provider, delivery.event, body, _header(headers, "content-type")
            )
        except pushes.PayloadError as error:
            # Not claimed: the provider's "redeliver" may try again once the cause is fixed.
            record(FAILED, str(error))
            return DeliveryResult(400, "bad_payload", str(error), field=error.field or None)
        skip = f"event {delivery.event!r} is not a branch or tag push" if push is None else ""
        if push is not None:
            base.update(
                kind=push.kind.value,
                branch=push.branch or "",
                tag=push.tag or "",
                commit_id=push.commit,
                committer=_committer(push),
            )
            skip = _filtered(hook, push)
        if skip:
            # Nothing will be started: claim the id and record the outcome in one write.
            reason, record_id = self.records.claim_and_add(
                now, hook.id, delivery.delivery_id, SKIPPED, skip, digest, **base
            )
            return DeliveryResult(200, SKIPPED, reason, record_id)
        assert push is not None
        # Something will be started: claim first, so a concurrent duplicate acts never twice.
        if not self.records.claim_delivery(hook.id, delivery.delivery_id, now, digest):
            reason = f"duplicate delivery {delivery.delivery_id}: already handled"
            return DeliveryResult(200, SKIPPED, reason, record(SKIPPED, reason))
        if delivery.mode == "password":
            _log.warning(
                "webhook %s: Gitee delivery in password mode; switch the hook to signing", hook.id
            )
        return await self._act(hook, push, delivery, record)

    def _refused(
        self,
        hook: _Hook,
        key: refusals.Key,
        now: datetime,
        reason: str,
        base: dict[str, str],
        fields: dict[str, str],
    ) -> None:
        """Count one refusal: its own record, the window's aggregate record, or neither."""
        counted = self.refusals.refuse(key)
        if not hook.declared or counted.write is refusals.Write.NONE:
            return
        if counted.write is refusals.Write.RECORD:
            self.records.add(now, hook.id, FAILED, reason, **base, **fields)
            return
        summary = _summary(counted.aggregated, key[1], reason)
        if counted.write is refusals.Write.OPEN:
            record_id = self.records.add(now, hook.id, FAILED, summary, **base, **fields)
            self.refusals.opened(key, record_id, counted.aggregated)
            self.records.tally(record_id, counted.aggregated, now, summary)
            return
        assert counted.record_id is not None
        self.records.tally(counted.record_id, counted.aggregated, now, summary)
        self.refusals.written(key, counted.aggregated)

    def flush(self, now: datetime) -> None:
        """Write the refusal counts still held in memory (the server calls it on stop)."""
        for key, record_id, count in self.refusals.unwritten():
            self.records.tally(record_id, count, now, _summary(count, key[1], "rate-limited"))
            self.refusals.written(key, count)

    async def _act(
        self,
        hook: _Hook,
        push: pushes.PushEvent,
        delivery: signatures.VerifiedDelivery,
        record: Callable[..., int],
    ) -> DeliveryResult:
        # One record, written once the outcome is known: a write less on the hot path.
        try:
            if hook.action == "build":
                builder = getattr(self.engine, "builder", None)
                if not isinstance(builder, Builder):
                    reason = "this engine has no image builder"
                    return DeliveryResult(200, SKIPPED, reason, record(SKIPPED, reason))
                await self._check_commit(hook, push)
                build_id = self._start_build(hook, push, builder)
                reason = f"build {build_id} started"
                return DeliveryResult(
                    202, SUCCESS, reason, record(SUCCESS, reason), build_id=build_id
                )
            if hook.action == "reconcile":
                await self.engine.reconcile_now(
                    f"webhook {hook.id}: {push.ref} at {push.commit[:12]}"
                )
                reason = "reconcile requested"
                return DeliveryResult(202, SUCCESS, reason, record(SUCCESS, reason))
            if hook.action != "deploy" or not hook.target_env or hook.project is None:
                raise errors.PermanentError(
                    f"trigger {hook.id} has no deploy target (action {hook.action!r})"
                )
            version = push.tag if push.tag is not None else push.commit
            await self._check_commit(hook, push)
            detail = {
                "trigger_id": hook.id,
                "delivery_id": delivery.delivery_id,
                "ref": push.ref,
                "commit": push.commit,
                "committer": _committer(push),
            }
            later = _QueuedRecord(self.records, hook.id, delivery.delivery_id)
            started = await self.engine.deploy_or_queue(
                hook.project,
                hook.target_env,
                version,
                actor=None,
                trigger=Trigger.WEBHOOK,
                detail=detail,
                listener=later.tell,
            )
        except Exception as error:  # noqa: BLE001 - every outcome becomes a record and a result
            status, code = _failure_status(error)
            message = f"{type(error).__name__}: {error}" if status == 500 else str(error)
            record(FAILED, message)
            # Let the provider's "redeliver" try again once the cause is fixed.
            self.records.release_delivery(hook.id, delivery.delivery_id)
            if status == 500:
                _log.exception("webhook %s: action failed", hook.id)
            return DeliveryResult(status, code, message)
        if isinstance(started, queueing.HandedOver):
            where = f"committed {started.commit[:10]}" if started.commit else "Git asks for it"
            reason = f"{started.version} {where}; replica {started.holder} deploys it"
            return DeliveryResult(202, SUCCESS, reason, record(SUCCESS, reason))
        if isinstance(started, queueing.QueuedDeploy):
            reason = (
                f"queued behind run {started.behind}: deployed when it ends, "
                "unless a newer push takes its place"
            )
            record_id = record(QUEUED, reason)
            later.bind(record_id)
            return DeliveryResult(202, QUEUED, reason, record_id)
        reason = f"run {started.id} started"
        record_id = record(SUCCESS, reason, run_id=started.id)
        return DeliveryResult(202, SUCCESS, reason, record_id, run_id=started.id)

    async def _check_commit(self, hook: _Hook, push: pushes.PushEvent) -> None:
        """For providers that sign no body: the pushed commit must be in the app repo."""
        if self.commit_check is None or hook.source not in commits.UNSIGNED_BODIES:
            return
        desired = self.engine.desired
        project = desired.projects.get(hook.project or "") if desired else None
        if project is None:
            return
        problem = await self.commit_check(project, push.commit, push.tag)
        if problem:
            raise errors.PermanentError(
                f"refused: {problem} (its body is not signed by {hook.source})"
            )

    def _start_build(self, hook: _Hook, push: pushes.PushEvent, builder: Builder) -> str:
        """Start the build of the pushed tag or commit; its id. PermanentError when refused."""
        desired = self.engine.desired
        project = desired.projects.get(hook.project or "") if desired else None
        if project is None:
            raise errors.PermanentError(f"trigger {hook.id} names no project to build")
        try:
            env = image_builds.build_environment(project, hook.target_env)
            # A tag is built as the tag (the builder resolves it); a branch push as its commit.
            request = image_builds.request_for(
                project,
                env,
                version=push.tag if push.tag is not None else push.commit,
                commit=None if push.tag is not None else push.commit,
                actor=f"webhook:{hook.id}",
                trigger="webhook",
            )
            return builder.start(request).id
        except (ValueError, BuildError) as exc:
            raise errors.PermanentError(f"trigger {hook.id}: {exc}") from None

    def _secret(self, hook: _Hook, address: str) -> str:
        """The trigger's secret, read through the credential manager at most once a minute.

        Every read is an audited use; reading it for each delivery would let a flood of
        forged requests flood the audit log too (and cost a write per request).
        """
        assert self.credentials is not None
        desired = self.engine.desired
        key = (hook.secret, hook.project, desired.commit if desired else "")
        cached = self._secrets.get(key)
        # A monotonic clock, not ``now``: cache age must not jump with the wall clock.
        now = time.monotonic()
        if cached is not None and now - cached[1] < SECRET_CACHE_SECONDS:
            return cached[0]
        value = self.credentials.get(
            hook.secret, hook.project, f"webhook:{hook.id}", address
        ).value()
        if len(self._secrets) > 1000:
            self._secrets.clear()
        self._secrets[key] = (value, now)
        return value


class _QueuedRecord:
    """The record of a queued delivery, updated once the engine says what it became."""

    _STATUS = {
        queueing.STARTED: SUCCESS,
        queueing.SUPERSEDED: SUPERSEDED,
        queueing.FAILED: FAILED,
    }

    def __init__(self, records: DeliveryRecords, trigger_id: str, delivery_id: str):
        self.records = records
        self.trigger_id = trigger_id
        self.delivery_id = delivery_id
        self.record_id: int | None = None
        self._early: queueing.QueueOutcome | None = None

    def tell(self, outcome: queueing.QueueOutcome) -> None:
        """The engine's word on the queued request (kept until the record exists)."""
        if self.record_id is None:
            self._early = outcome
            return
        status = self._STATUS[outcome.status]
        self.records.update(self.record_id, status, outcome.reason, outcome.run_id)
        if status == FAILED:  # let the provider's "redeliver" try again
            self.records.release_delivery(self.trigger_id, self.delivery_id)

    def bind(self, record_id: int) -> None:
        """The queued record is written: apply what the engine said meanwhile, if anything."""
        self.record_id = record_id
        if self._early is not None:
            self.tell(self._early)


def _failure_status(error: Exception) -> tuple[int, str]:
    """The status and code a failed action maps onto: retry later, refused, or a bug."""
    if isinstance(error, errors.TemporaryError):
        return 503, "try_again"
    if isinstance(error, errors.PermanentError | errors.PermissionDenied | KeyError):
        return 422, "action_refused"
    return 500, "action_failed"


def _filtered(hook: _Hook, push: pushes.PushEvent) -> str:
    """Why a parsed push is not acted on ('' when it is)."""
    if push.deleted:
        return f"{push.kind.value} {push.name!r} was deleted"
    if push.kind.value not in hook.events:
        return f"{push.kind.value} events are not enabled for this trigger (events: {', '.join(hook.events)})"
    if (
        push.branch is not None
        and hook.branches
        and not branches.matches(hook.branches, push.branch)
    ):
        return f"branch {push.branch!r} matches none of {', '.join(hook.branches)}"
    return ""


def _committer(push: pushes.PushEvent) -> str:
    if push.committer_email:
        return f"{push.committer_name} <{push.committer_email}>"
    return push.committer_name


def _bound_to_body(
    records: DeliveryRecords, trigger_id: str, delivery: signatures.VerifiedDelivery, digest: str
) -> None:
    """Refuse a delivery id taken before with another body (a captured Gitee pair, reused)."""
    seen = records.claimed_body(trigger_id, delivery.delivery_id)
    if seen and not hmac.compare_digest(seen, digest):
        header = (
            signatures.GITEE_TIMESTAMP if delivery.provider is signatures.Provider.GITEE else None
        )
        raise signatures.WebhookRejected(
            f"delivery {delivery.delivery_id} was already received with another body", header
        )


def _summary(count: int, address: str, reason: str) -> str:
    """The reason an aggregate record gives for the refusals it counts."""
    plural = "delivery" if count == 1 else "deliveries"
    return f"{count} more {plural} from {address} refused in this window (last: {reason})"


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def _event_header(headers: Mapping[str, str]) -> str:
    """The event a rejected delivery claims to be, for its record (at most 100 characters)."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)  # the first of repeated headers, as Starlette's
    for name in (signatures.GITHUB_EVENT, signatures.GITLAB_EVENT, signatures.GITEE_EVENT):
        if name.lower() in lowered:
            return lowered[name.lower()][:100]
    return ""
