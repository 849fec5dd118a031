"""Git webhooks: verify a delivery, record it, and start the trigger's action once.

Endpoints
    ``POST /api/release/webhooks/{id}/trigger`` for the ``WebhookTrigger``s declared in
    the config repo (``id`` is ``project.name``), and ``POST /api/release/webhooks/config``
    for the config repo itself (``settings.config_webhook``: a push to the desired
    branch reconciles at once).

The path of one delivery, in order (each refusal leaves a trigger record):

1. unknown trigger → 404 (no record: nothing to attribute it to);
2. body larger than the limit (default 1 MiB) → 413, checked on ``Content-Length`` and
   again while reading, so a lying client cannot make us buffer more;
3. signature / token / timestamp checked by ``reconciler.trigger.signatures``
   (constant-time; Gitee timestamps older or newer than ``max_skew`` are stale) → 401
   naming the header at fault; the secret is the trigger's credential, read through
   the ``CredentialManager`` (an audited use) and kept in memory for at most a minute
   per trigger and config commit, so forged floods cannot flood the audit log;
4. the delivery id is claimed in ``webhook_deliveries``; a repeat is acknowledged
   (200, ``skipped: duplicate delivery``) and not acted on again. When the action
   fails the claim is released, so the provider's "redeliver" can retry it;
5. the payload is parsed to branch or tag, commit and committer; other events
   (``ping``, merge requests) and deleted refs are recorded as skipped;
6. filters: the event kind must be in the trigger's ``events`` (push / tag); a branch
   push must match one of ``branches`` (globs; none listed = every branch). Branch
   filters do not apply to tags;
7. the action: ``deploy`` → ``engine.deploy(project, target_env, version, actor=None,
   trigger=WEBHOOK)`` where ``version`` is the **tag name** for a tag event and the
   **commit id** for a branch push (an application repo's commit is the version its
   build tags); ``reconcile`` → ``engine.reconcile_now``; ``build`` → a build of the
   pushed tag (tag events) or commit (branch pushes) on the engine's Builder, with the
   build settings of ``target_env`` (default: the first environment that builds);
   skipped when the engine has no Builder.

Answers: 202 with the run id when a run started (the build id when a build started),
200 for skipped deliveries, 400 for a
payload that is not what the provider documents, 422 when the engine refused the
action, 503 when it asked to retry later, 500 for anything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler import errors
from reconciler.api import auth
from reconciler.builder.building import Builder, BuildError
from reconciler.credential.manager import CredentialManager
from reconciler.engine import image_builds
from reconciler.engine.control import EngineControl
from reconciler.gitops import model
from reconciler.rules import branches
from reconciler.runs import Trigger
from reconciler.store.database import Database
from reconciler.trigger import pushes, signatures

_log = logging.getLogger(__name__)

DEFAULT_BODY_LIMIT = 1 << 20
CONFIG_TRIGGER_ID = "config"
SECRET_CACHE_SECONDS = 60.0

SUCCESS = "success"
FAILED = "failed"
SKIPPED = "skipped"

_SCHEMA = [
    """
    CREATE TABLE trigger_records (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, trigger_id TEXT NOT NULL,
        project TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '', event TEXT NOT NULL DEFAULT '',
        delivery_id TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT '', branch TEXT NOT NULL DEFAULT '',
        tag TEXT NOT NULL DEFAULT '', commit_id TEXT NOT NULL DEFAULT '', committer TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', run_id TEXT NOT NULL DEFAULT '',
        source_ip TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX trigger_records_by_trigger ON trigger_records (trigger_id, id);
    CREATE INDEX trigger_records_by_project ON trigger_records (project, id);
    CREATE TABLE webhook_deliveries (
        trigger_id TEXT NOT NULL, delivery_id TEXT NOT NULL, received_at TEXT NOT NULL,
        PRIMARY KEY (trigger_id, delivery_id)
    )
    """,
]


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """What one delivery (or schedule firing) led to."""

    id: int
    at: str
    trigger_id: str
    project: str
    source: str
    event: str
    delivery_id: str
    kind: str
    branch: str
    tag: str
    commit: str
    committer: str
    status: str
    reason: str
    run_id: str
    source_ip: str

    def as_dict(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return {
            "id": self.id,
            "triggered_at": self.at,
            "trigger_id": self.trigger_id,
            "project": self.project or None,
            "source": self.source,
            "event": self.event,
            "delivery_id": self.delivery_id,
            "kind": self.kind or None,
            "branch": self.branch or None,
            "tag": self.tag or None,
            "commit": self.commit or None,
            "committer": self.committer or None,
            "status": self.status,
            "reason": self.reason,
            "run_id": self.run_id or None,
            "source_ip": self.source_ip or None,
        }


class TriggerRecords:
    """The ``trigger_records`` and ``webhook_deliveries`` tables."""

    def __init__(self, db: Database):
        self.db = db
        db.migrate("trigger_records", _SCHEMA)

    def add(
        self, at: datetime, trigger_id: str, status: str, reason: str = "", **fields: str
    ) -> int:
        """Append one record; returns its id."""
        with self.db.transaction() as conn:
            return _insert_record(conn, at, trigger_id, status, reason, fields)

    def claim_and_add(
        self,
        at: datetime,
        trigger_id: str,
        claim: str,
        status: str,
        reason: str = "",
        **fields: str,
    ) -> tuple[str, int]:
        """Claim delivery id ``claim`` and record the outcome in one transaction: (reason, id).

        For deliveries that start nothing (filtered out): one write instead of two on the
        commonest path. A delivery seen before is recorded as the duplicate it is.
        """
        with self.db.transaction() as conn:
            fresh = (
                conn.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries VALUES (?, ?, ?)",
                    (trigger_id, claim, at.astimezone(UTC).isoformat(timespec="seconds")),
                ).rowcount
                == 1
            )
            if not fresh:
                status, reason = SKIPPED, f"duplicate delivery {claim}: already handled"
            return reason, _insert_record(conn, at, trigger_id, status, reason, fields)

    def get(self, record_id: int) -> TriggerRecord | None:
        """One record by id."""
        rows = self.db.query("SELECT * FROM trigger_records WHERE id = ?", (record_id,))
        return _record(rows[0]) if rows else None

    def list(
        self,
        trigger_id: str | None = None,
        projects: list[str] | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[TriggerRecord], int]:
        """Records newest first with the total count; ``projects`` None means all."""
        where: list[str] = []
        params: list[Any] = []
        if trigger_id:
            where.append("trigger_id = ?")
            params.append(trigger_id)
        if projects is not None:
            where.append(f"project IN ({', '.join('?' * len(projects))})" if projects else "0")
            params += projects
        if status:
            where.append("status = ?")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self.db.query(f"SELECT COUNT(*) FROM trigger_records {clause}", params)[0][0]
        rows = self.db.query(
            f"SELECT * FROM trigger_records {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_record(r) for r in rows], total

    def claim_delivery(self, trigger_id: str, delivery_id: str, at: datetime) -> bool:
        """Take a delivery id; False when it was seen before (a replay or a redelivery)."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries VALUES (?, ?, ?)",
                (trigger_id, delivery_id, at.astimezone(UTC).isoformat(timespec="seconds")),
            )
            return cursor.rowcount == 1

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None:
        """Forget a delivery id so a redelivery is acted on."""
        self.db.execute(
            "DELETE FROM webhook_deliveries WHERE trigger_id = ? AND delivery_id = ?",
            (trigger_id, delivery_id),
        )


def _record(row: Any) -> TriggerRecord:
    return TriggerRecord(
        row["id"],
        row["at"],
        row["trigger_id"],
        row["project"],
        row["source"],
        row["event"],
        row["delivery_id"],
        row["kind"],
        row["branch"],
        row["tag"],
        row["commit_id"],
        row["committer"],
        row["status"],
        row["reason"],
        row["run_id"],
        row["source_ip"],
    )


class _BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, or _BodyTooLarge as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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


class WebhookReceiver:
    """The webhook endpoints, bound to an engine, the records and the credentials."""

    def __init__(
        self,
        engine: EngineControl,
        records: TriggerRecords,
        credentials: CredentialManager | None,
        body_limit: int = DEFAULT_BODY_LIMIT,
        max_skew: timedelta = signatures.DEFAULT_MAX_SKEW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.engine = engine
        self.records = records
        self.credentials = credentials
        self.body_limit = body_limit
        self.max_skew = max_skew
        self.clock = clock
        self._secrets: dict[tuple[str, str | None, str], tuple[str, float]] = {}

    def routes(self) -> list[Route]:
        """The two webhook routes."""
        return [
            Route(
                auth.API_PREFIX + "/webhooks/config",
                self.config,
                methods=["POST"],
                name="webhook_config",
            ),
            Route(
                auth.API_PREFIX + "/webhooks/{trigger_id}/trigger",
                self.trigger,
                methods=["POST"],
                name="webhook_trigger",
            ),
        ]

    async def trigger(self, request: Request) -> Response:
        """POST /api/release/webhooks/{id}/trigger."""
        trigger_id = request.path_params["trigger_id"]
        declared = find_trigger(self.engine.desired, trigger_id)
        if declared is None:
            return auth.error_response(
                404, "not_found", f"webhook trigger {trigger_id!r} does not exist"
            )
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
        return await self._deliver(request, hook)

    async def config(self, request: Request) -> Response:
        """POST /api/release/webhooks/config: the config repo's own webhook."""
        desired = self.engine.desired
        hook_config = desired.settings.config_webhook if desired is not None else None
        if desired is None or not hook_config:
            return auth.error_response(
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
        return await self._deliver(request, hook)

    async def _deliver(self, request: Request, hook: _Hook) -> Response:
        now = self.clock()
        address = auth.client_address(request.scope)
        base = {"project": hook.project or "", "source": hook.source, "source_ip": address}

        def record(status: str, reason: str = "", **fields: str) -> int:
            return self.records.add(now, hook.id, status, reason, **base, **fields)

        try:
            body = await read_limited(request, self.body_limit)
        except _BodyTooLarge:
            reason = f"body larger than {self.body_limit} bytes"
            record(FAILED, reason)
            return auth.error_response(413, "body_too_large", reason)
        if self.credentials is None:
            record(FAILED, "the server has no credential manager to read webhook secrets")
            return auth.error_response(503, "not_configured", "webhook secrets are not available")
        try:
            secret = self._secret(hook, address)
        except (errors.QuicFlowError, KeyError) as error:
            record(FAILED, f"secret credential {hook.secret!r}: {error}")
            return auth.error_response(
                500, "secret_unavailable", f"the secret of webhook {hook.id} cannot be read"
            )
        try:
            delivery = signatures.verify(
                hook.source, request.headers, body, secret, now=now, max_skew=self.max_skew
            )
        except signatures.WebhookRejected as rejected:
            record(FAILED, str(rejected), event=_event_header(request))
            return auth.error_response(401, "webhook_rejected", rejected.reason, rejected.header)
        base.update(event=delivery.event, delivery_id=delivery.delivery_id)
        if not hook.enabled:
            record(SKIPPED, "trigger is disabled")
            return _answer(200, SKIPPED, "trigger is disabled")
        try:
            push = pushes.parse_push(delivery.provider, delivery.event, body)
        except pushes.PayloadError as error:
            # Not claimed: the provider's "redeliver" may try again once the cause is fixed.
            record(FAILED, str(error))
            return auth.error_response(400, "bad_payload", str(error), error.field or None)
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
                now, hook.id, delivery.delivery_id, SKIPPED, skip, **base
            )
            return _answer(200, SKIPPED, reason, record_id)
        assert push is not None
        # Something will be started: claim first, so a concurrent duplicate acts never twice.
        if not self.records.claim_delivery(hook.id, delivery.delivery_id, now):
            reason = f"duplicate delivery {delivery.delivery_id}: already handled"
            return _answer(200, SKIPPED, reason, record(SKIPPED, reason))
        return await self._act(hook, push, delivery, record)

    async def _act(
        self,
        hook: _Hook,
        push: pushes.PushEvent,
        delivery: signatures.VerifiedDelivery,
        record: Callable[..., int],
    ) -> Response:
        # One record, written once the outcome is known: a write less on the hot path.
        try:
            if hook.action == "build":
                builder = getattr(self.engine, "builder", None)
                if not isinstance(builder, Builder):
                    reason = "this engine has no image builder"
                    return _answer(200, SKIPPED, reason, record(SKIPPED, reason))
                build_id = self._start_build(hook, push, builder)
                reason = f"build {build_id} started"
                record_id = record(SUCCESS, reason)
                body = {"status": SUCCESS, "reason": reason, "record": record_id}
                return JSONResponse({**body, "build_id": build_id}, status_code=202)
            if hook.action == "reconcile":
                await self.engine.reconcile_now(
                    f"webhook {hook.id}: {push.ref} at {push.commit[:12]}"
                )
                reason = "reconcile requested"
                return _answer(202, SUCCESS, reason, record(SUCCESS, reason))
            if hook.action != "deploy" or not hook.target_env or hook.project is None:
                raise errors.PermanentError(
                    f"trigger {hook.id} has no deploy target (action {hook.action!r})"
                )
            version = push.tag if push.tag is not None else push.commit
            detail = {
                "trigger_id": hook.id,
                "delivery_id": delivery.delivery_id,
                "ref": push.ref,
                "commit": push.commit,
                "committer": _committer(push),
            }
            run = await self.engine.deploy(
                hook.project,
                hook.target_env,
                version,
                actor=None,
                trigger=Trigger.WEBHOOK,
                detail=detail,
            )
        except Exception as error:  # noqa: BLE001 - every outcome becomes a record and an answer
            status, code = _failure_status(error)
            message = f"{type(error).__name__}: {error}" if status == 500 else str(error)
            record(FAILED, message)
            # Let the provider's "redeliver" try again once the cause is fixed.
            self.records.release_delivery(hook.id, delivery.delivery_id)
            if status == 500:
                _log.exception("webhook %s: action failed", hook.id)
            return auth.error_response(status, code, message)
        reason = f"run {run.id} started"
        record_id = record(SUCCESS, reason, run_id=run.id)
        body = {"status": SUCCESS, "reason": reason, "record": record_id, "run_id": run.id}
        return JSONResponse(body, status_code=202)

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


def _failure_status(error: Exception) -> tuple[int, str]:
    if isinstance(error, errors.TemporaryError):
        return 503, "try_again"
    if isinstance(
        error, errors.PermanentError | errors.ApprovalRequired | errors.PermissionDenied | KeyError
    ):
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


def _insert_record(
    conn: Any, at: datetime, trigger_id: str, status: str, reason: str, fields: dict[str, str]
) -> int:
    columns = ["at", "trigger_id", "status", "reason", *fields]
    values = [at.astimezone(UTC).isoformat(timespec="milliseconds"), trigger_id, status, reason]
    sql = f"INSERT INTO trigger_records ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    return int(conn.execute(sql, [*values, *fields.values()]).lastrowid)


def _event_header(request: Request) -> str:
    for name in (signatures.GITHUB_EVENT, signatures.GITLAB_EVENT, signatures.GITEE_EVENT):
        if name in request.headers:
            return request.headers[name][:100]
    return ""


def _answer(
    status_code: int, status: str, reason: str, record_id: int | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "reason": reason}
    if record_id is not None:
        body["record"] = record_id
    return JSONResponse(body, status_code=status_code)
