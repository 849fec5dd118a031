"""Read-only endpoints over the credential center and the alerting: metadata and records.

- ``GET /api/release/credentials``: credential metadata (never values) the caller may
  know of: global credentials and those of projects they are a member of.
- ``GET /api/release/credentials/{id}/logs``: the use audit of one credential, for
  admins, and for owners and maintainers of the credential's project.
- ``GET /api/release/alerts/rules`` and ``/alerts/history``: alert rules in force and
  alert records, limited to the projects the caller can see (global ones to everyone).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.alert.notifier import Notifier
from reconciler.api import auth, views
from reconciler.api.routes import _int_param, principal_of
from reconciler.auth import permissions
from reconciler.credential.manager import CredentialManager
from reconciler.credential.model import parse_credential_id
from reconciler.engine.control import EngineControl


class OperationsApi:
    """Credentials and alerts, as the API shows them."""

    def __init__(
        self,
        engine: EngineControl,
        credentials: CredentialManager | None,
        notifier: Notifier | None,
    ):
        self.engine = engine
        self.credentials = credentials
        self.notifier = notifier

    def routes(self) -> list[Route]:
        prefix = auth.API_PREFIX
        return [
            Route(f"{prefix}/credentials", self.list_credentials),
            Route(f"{prefix}/credentials/{{id}}/logs", self.credential_logs),
            Route(f"{prefix}/alerts/rules", self.alert_rules),
            Route(f"{prefix}/alerts/history", self.alert_history),
        ]

    def _visible_projects(self, principal: auth.Principal) -> set[str] | None:
        """Projects the caller may see; None means all."""
        if principal.sees_everything():
            return None
        desired = self.engine.desired
        if desired is None:
            return set()
        return {name for name, p in desired.projects.items() if auth.visible(principal, p)}

    async def list_credentials(self, request: Request) -> Response:
        principal = principal_of(request)
        if self.credentials is None:
            raise auth.ApiError(
                503, "credentials_unavailable", "the credential store is not available"
            )
        visible = self._visible_projects(principal)
        items = [
            info.as_dict()
            for info in self.credentials.list()
            if info.scope.project is None or visible is None or info.scope.project in visible
        ]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def credential_logs(self, request: Request) -> Response:
        principal = principal_of(request)
        if self.credentials is None:
            raise auth.ApiError(
                503, "credentials_unavailable", "the credential store is not available"
            )
        credential_id = request.path_params["id"]
        try:
            scope, _ = parse_credential_id(credential_id)
            self.credentials.info(credential_id)
        except (KeyError, ValueError):
            raise auth.not_found("credential", credential_id) from None
        desired = self.engine.desired
        project = desired.projects.get(scope.project) if desired and scope.project else None
        verdict = permissions.may_read_credential_audit(principal.actor(project), scope.project)
        if not verdict.allowed:
            raise auth.refused(verdict, "project", scope.project or "")
        limit = _int_param(request, "limit", 100, 1, 1000)
        items = [entry.as_dict() for entry in self.credentials.logs(credential_id, limit)]
        return JSONResponse(views.page(items, len(items), limit, 0))

    async def alert_rules(self, request: Request) -> Response:
        visible = self._visible_projects(principal_of(request))
        rules: list[dict[str, Any]] = self.notifier.list_rules() if self.notifier else []
        items = [
            r
            for r in rules
            if r.get("project") is None or visible is None or r.get("project") in visible
        ]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def alert_history(self, request: Request) -> Response:
        visible = self._visible_projects(principal_of(request))
        limit = _int_param(request, "limit", 50, 1, 500)
        offset = _int_param(request, "offset", 0, 0)
        project = request.query_params.get("project") or None
        if project is not None and visible is not None and project not in visible:
            raise auth.not_found("project", project)
        records = self.notifier.history(limit, offset, project=project) if self.notifier else []
        items = [r.as_dict() for r in records]
        items = [
            r
            for r in items
            if r.get("project") in (None, "") or visible is None or r.get("project") in visible
        ]
        return JSONResponse(views.page(items, len(items), limit, offset))
