"""Log search and export across runs and builds, and the Prometheus ``/metrics`` page.

``GET /api/release/logs/query`` searches stored (masked) lines: by run, build, task,
stage, target, project, environment, level, text and time (``reconciler.log.queries``
lists the parameters), answered by the sink ``settings.logs.backend`` names — the
local store or VictoriaLogs. It answers ``{"items", "limit", "backend",
"next_cursor"}``; ``next_cursor`` continues the search where this page ended.

``GET /api/release/logs/{id}/export`` streams every line of one run or build (``id``
is either): ``format=ndjson`` (one JSON object a line, the default) or ``text``
(``time [source] channel: line``), gzip-compressed when the request says
``gzip=1`` or ``Accept-Encoding: gzip``. ``filter=`` keeps only lines containing it.

Who may read what is the same as for a run's own log: a run or build of a project the
caller cannot see is 404, as if it did not exist; a search without ``run_id`` covers
only the projects the caller can see.

``GET /metrics`` is the Prometheus exposition of ``reconciler.metrics``; its labels
name every project, so it needs an admin's token (or an open status page).
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reconciler.api import auth, routes
from reconciler.engine.control import EngineControl
from reconciler.log import queries
from reconciler.log.records import LogLine
from reconciler.log.victorialogs import QueryFailed
from reconciler.metrics import CONTENT_TYPE, Metrics
from reconciler.store.builds import BuildStore

P = auth.API_PREFIX
_EXPORT_FORMATS = ("ndjson", "text")
_EXPORT_CHUNK = 500


def _gzip_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` as one gzip stream, flushed chunk by chunk."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


class LogApi:
    """The cross-run log endpoints and ``/metrics``."""

    def __init__(self, engine: EngineControl, metrics: Metrics | None = None):
        self.engine = engine
        self.metrics = metrics

    def routes(self) -> list[Route]:
        """The routes to add to the application."""
        return [
            Route(P + "/logs/query", self.query),
            Route(P + "/logs/{stream_id}/export", self.export),
            Route("/metrics", self.metrics_page),
        ]

    # -- who may read which stream -------------------------------------------------------

    def _stream_scope(self, principal: auth.Principal, stream_id: str, field: str) -> str:
        """The project of a run's or build's stream the caller may see (else 404)."""
        run = self.engine.runs.get(stream_id)
        project: str | None = None
        env: str | None = None
        if run is not None:
            project, env = run.project, run.env
        else:
            build = BuildStore(self.engine.logs.db).get(stream_id)
            if build is not None:
                project = build.project
        desired = self.engine.desired
        found = desired.projects.get(project) if desired and project else None
        if found is None or not auth.visible(principal, found):
            what = "run" if field == "run_id" else "build" if field == "build_id" else "log"
            raise auth.not_found(what, stream_id, field)
        auth.authorize(
            principal, desired, found.name, "view", env if env in found.environments else None
        )
        return found.name

    def _visible(self, principal: auth.Principal) -> tuple[str, ...] | None:
        """The projects a search may cover (None: every project)."""
        if principal.sees_everything():
            return None
        desired = self.engine.desired
        if desired is None:
            raise auth.ApiError(503, "not_ready", "no valid desired state is loaded yet")
        return tuple(
            sorted(p.name for p in desired.projects.values() if auth.visible(principal, p))
        )

    # -- endpoints -----------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        """GET /logs/query?task_id=&filter=&run_id=&build_id=&level=&start=&end=&limit=&cursor=."""
        principal = routes.principal_of(request)
        try:
            query = queries.from_params(request.query_params, time.time_ns())
        except queries.QueryError as error:
            raise auth.ApiError(400, "invalid_parameter", str(error), error.field) from None
        if query.run_id:
            self._stream_scope(principal, query.run_id, "run_id")
        if query.build_id:
            self._stream_scope(principal, query.build_id, "build_id")
        if query.project:
            auth.authorize(principal, self.engine.desired, query.project, "view")
        query = replace(query, projects=self._visible(principal))
        try:
            backend, lines = await self.engine.logs.query(query)
        except QueryFailed as error:
            raise auth.ApiError(
                502, "log_backend_unavailable", str(error), headers={"Retry-After": "5"}
            ) from None
        next_cursor = (
            queries.cursor_of(lines[-1].time_ns, lines[-1].id)
            if len(lines) == query.limit
            else None
        )
        return JSONResponse(
            {
                "items": [line.as_dict() for line in lines],
                "limit": query.limit,
                "backend": backend,
                "next_cursor": next_cursor,
            }
        )

    async def export(self, request: Request) -> Response:
        """GET /logs/{id}/export?format=ndjson|text&gzip=1&filter=: the whole log, streamed."""
        principal = routes.principal_of(request)
        stream_id = request.path_params["stream_id"]
        project = self._stream_scope(principal, stream_id, "id")
        fmt = request.query_params.get("format") or "ndjson"
        if fmt not in _EXPORT_FORMATS:
            raise auth.ApiError(400, "invalid_parameter", "format must be ndjson or text", "format")
        wanted = request.query_params.get("gzip", "")
        if wanted not in ("", "0", "1", "true", "false"):
            raise auth.ApiError(400, "invalid_parameter", "gzip must be 1 or 0", "gzip")
        accepts = "gzip" in request.headers.get("accept-encoding", "").lower()
        compress = wanted in ("1", "true") or (wanted == "" and accepts)
        contains = request.query_params.get("filter") or None
        chunks = self._export_chunks(stream_id, fmt, contains)
        extension = "ndjson" if fmt == "ndjson" else "log"
        media = "application/x-ndjson" if fmt == "ndjson" else "text/plain; charset=utf-8"
        headers = {
            "Content-Disposition": f'attachment; filename="{project}-{stream_id}.{extension}'
            + ('.gz"' if compress and wanted in ("1", "true") else '"'),
        }
        body: Iterator[bytes] = chunks
        if compress:
            body = _gzip_chunks(chunks)
            if wanted in ("1", "true"):
                media = "application/gzip"
            else:
                headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        return StreamingResponse(_iterate(body), media_type=media, headers=headers)

    def _export_chunks(self, stream_id: str, fmt: str, contains: str | None) -> Iterator[bytes]:
        buffer: list[str] = []
        for line in self.engine.logs.export(stream_id):
            if contains and contains not in line.line:
                continue
            buffer.append(_export_line(line, fmt))
            if len(buffer) >= _EXPORT_CHUNK:
                yield "".join(buffer).encode()
                buffer.clear()
        if buffer:
            yield "".join(buffer).encode()

    async def metrics_page(self, request: Request) -> Response:
        """GET /metrics: Prometheus text format."""
        principal = routes.principal_of(request)
        if not principal.sees_everything():
            raise auth.ApiError(
                403, "forbidden", "metrics name every project: an admin's token is needed"
            )
        if self.metrics is None:
            raise auth.ApiError(404, "not_found", "metrics are not collected by this server")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _export_line(line: LogLine, fmt: str) -> str:
    if fmt == "text":
        return line.as_text()
    return json.dumps(line.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"


async def _iterate(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Hand the (blocking, short) reads of ``chunks`` to the response one at a time."""
    for chunk in chunks:
        yield chunk


def metrics_for(engine: Any) -> Metrics | None:
    """The engine's metrics, made and subscribed on first use (None without a bus)."""
    existing = getattr(engine, "metrics", None)
    if isinstance(existing, Metrics):
        return existing
    if getattr(engine, "bus", None) is None or getattr(engine, "db", None) is None:
        return None
    made = Metrics(engine)
    made.subscribe()
    with contextlib.suppress(AttributeError):  # an engine that takes no attributes
        engine.metrics = made
    return made
