"""Git webhooks over HTTP: read a delivery, hand it to the trigger, answer what it led to.

Endpoints
    ``POST /api/release/webhooks/{id}/trigger`` for the ``WebhookTrigger``s declared in
    the config repo (``id`` is ``project.name``), and ``POST /api/release/webhooks/config``
    for the config repo itself (``settings.config_webhook``: a push to the desired
    branch reconciles at once).

An endpoint reads the body — at most ``body_limit`` bytes (default 1 MiB), checked on
``Content-Length`` and again while reading, so a lying client cannot make us buffer
more — and passes it with the headers, the source address and the time to
``reconciler.trigger.deliveries.WebhookDeliveries``, which verifies, deduplicates,
filters, acts and records; its ``DeliveryResult`` becomes the JSON answer:
``{"status", "reason", "record"?, "run_id"? | "build_id"?}`` when the delivery was taken
(``status`` ``queued`` with no ``run_id`` for a push queued behind a running deploy: its
record names the run once it starts), the API's error format when it was refused.

Unauthenticated callers learn nothing about which trigger ids exist: an unknown id is
answered exactly as a declared trigger whose secret the caller does not know. A source
sending refused deliveries is answered 429 (with ``Retry-After``) once it passes the
refusal limit, and its refusals are counted in one trigger record per window.
GitHub's default ``application/x-www-form-urlencoded`` deliveries are read from their
``payload`` field.

The trigger records (``trigger_records`` and ``webhook_deliveries`` tables) are kept
by ``reconciler.store.triggers.TriggerRecords``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.api import auth
from reconciler.credential.manager import CredentialManager
from reconciler.engine.control import EngineControl
from reconciler.store import triggers
from reconciler.trigger import commits, deliveries, refusals, signatures

DEFAULT_BODY_LIMIT = 1 << 20


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


class WebhookReceiver:
    """The webhook endpoints over one ``WebhookDeliveries``."""

    def __init__(
        self,
        engine: EngineControl,
        records: triggers.TriggerRecords,
        credentials: CredentialManager | None,
        body_limit: int = DEFAULT_BODY_LIMIT,
        max_skew: timedelta = signatures.DEFAULT_MAX_SKEW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        counter: refusals.RefusalCounter | None = None,
    ):
        data_dir = getattr(engine, "data_dir", None)
        check = (
            commits.AppRepoCommits(Path(data_dir) / "app-repos", credentials).verify
            if data_dir is not None
            else None
        )
        self.deliveries = deliveries.WebhookDeliveries(
            engine, records, credentials, body_limit, max_skew, counter, check
        )
        self.body_limit = body_limit
        self.clock = clock

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
        now = self.clock()
        body = await self._body(request)
        result = await self.deliveries.handle(
            request.path_params["trigger_id"],
            request.headers,
            body,
            auth.client_address(request.scope),
            now,
        )
        return _response(result)

    async def config(self, request: Request) -> Response:
        """POST /api/release/webhooks/config: the config repo's own webhook."""
        now = self.clock()
        body = await self._body(request)
        result = await self.deliveries.handle_config(
            request.headers, body, auth.client_address(request.scope), now
        )
        return _response(result)

    def flush(self) -> None:
        """Write the refusal counts still held in memory (on stop)."""
        self.deliveries.flush(self.clock())

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than the limit (the delivery path refuses it)."""
        try:
            return await read_limited(request, self.body_limit)
        except _BodyTooLarge:
            return None


def _response(result: deliveries.DeliveryResult) -> JSONResponse:
    if not result.accepted:
        headers = (
            {"Retry-After": str(max(1, math.ceil(result.retry_after)))}
            if result.retry_after is not None
            else None
        )
        return auth.error_response(
            result.status, result.code, result.message, result.field, headers
        )
    body: dict[str, Any] = {"status": result.code, "reason": result.message}
    if result.record_id is not None:
        body["record"] = result.record_id
    if result.run_id is not None:
        body["run_id"] = result.run_id
    if result.build_id is not None:
        body["build_id"] = result.build_id
    return JSONResponse(body, status_code=result.status)
