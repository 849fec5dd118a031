"""Who is asking and what they may do: API tokens, browser sessions, project permissions.

Authentication
    Users come from the config repo (``DesiredState.users``). API tokens are issued for
    a user (``quicflow token create USER``) and only their SHA-256 is stored, in the
    ``api_tokens`` table of the operational database; scripts send them as
    ``Authorization: Bearer <token>``. In a browser the login form takes the same token
    and sets a session cookie (HttpOnly, SameSite=Strict, random id stored hashed, with
    an expiry); logout deletes the session. Session cookies are read-only: run actions
    need the bearer header, so a page can never be tricked into acting.

    Failed authentication (a wrong bearer token or login) is counted per source address;
    past ``max_failures`` in ``window`` seconds the address gets 429 until the window
    has passed, for good tokens too, so guessing is no faster than the limit.

    Anonymous access is off. When the config repo sets
    ``settings.anonymous_status_page``, requests without credentials may read (GET) the
    status page and the read-only API it uses, as a viewer of every project.

Authorization
    Every project-scoped request is checked with ``permissions.allowed`` for the
    caller's role on that project. Callers who are not members of a project get **404**
    for it, exactly as for a project that does not exist, so project names do not leak;
    members whose role is too weak get **403** naming the weakest role that would do.
    ``is_admin`` users may do everything. Run actions map onto the matrix as: deploy,
    cancel and promote → ``deploy``; approve and reject → ``approve``; rollback →
    ``rollback`` (all three are stricter in protected environments).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from reconciler.auth import permissions
from reconciler.gitops import model
from reconciler.store.database import Database

TOKEN_PREFIX = "qft_"
SESSION_COOKIE = "quicflow_session"
API_PREFIX = "/api/release"

_SCHEMA = [
    """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, username TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL DEFAULT '',
        last_used_at TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX api_tokens_by_user ON api_tokens (username)
    """,
]


class ApiError(Exception):
    """An answer in the API's error format: ``{"error": {"code", "message", "field"?}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return error_response(self.status, self.code, self.message, self.field, self.headers)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error body with ``status``."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _utc(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: never the token itself."""

    id: str
    username: str
    kind: str
    created_at: str
    expires_at: str
    last_used_at: str


class TokenStore:
    """API tokens and browser sessions, stored as SHA-256 digests."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.db = db
        self.clock = clock
        db.migrate("api_tokens", _SCHEMA)

    def create(self, username: str, kind: str = "api", ttl: timedelta | None = None) -> str:
        """Issue a token for ``username``; the plain token is returned once and never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(token)
        now = self.clock()
        expires = _utc(now + ttl) if ttl else ""
        self.db.execute(
            "INSERT INTO api_tokens (id, username, hash, kind, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (digest[:12], username, digest, kind, _utc(now), expires),
        )
        return token

    def lookup(self, token: str, kind: str = "api") -> str | None:
        """The username a valid, unexpired token belongs to, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        # Looking up by digest is safe from timing attacks: the attacker controls the
        # preimage, not the digest; compare_digest below is belt and braces.
        digest = _digest(token)
        rows = self.db.query("SELECT * FROM api_tokens WHERE hash = ? AND kind = ?", (digest, kind))
        if not rows or not hmac.compare_digest(rows[0]["hash"], digest):
            return None
        row = rows[0]
        now = _utc(self.clock())
        if row["expires_at"] and row["expires_at"] <= now:
            return None
        if kind == "api" and row["last_used_at"][:16] != now[:16]:
            # At most one write per token and minute: a busy script must not turn
            # every read into a write.
            self.db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, row["id"]))
        return str(row["username"])

    def revoke(self, token_or_id: str) -> bool:
        """Delete a token (given itself or its id); True when one was deleted."""
        digest = _digest(token_or_id) if token_or_id.startswith(TOKEN_PREFIX) else None
        with self.db.transaction() as conn:
            if digest is not None:
                cursor = conn.execute("DELETE FROM api_tokens WHERE hash = ?", (digest,))
            else:
                cursor = conn.execute(
                    "DELETE FROM api_tokens WHERE id = ? AND kind = 'api'", (token_or_id,)
                )
            return cursor.rowcount > 0

    def revoke_user(self, username: str) -> int:
        """Delete every token and session of ``username``; how many were deleted."""
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM api_tokens WHERE username = ?", (username,)).rowcount

    def list(self, username: str | None = None) -> list[TokenInfo]:
        """API tokens (not sessions), optionally of one user."""
        sql = "SELECT * FROM api_tokens WHERE kind = 'api'"
        params: tuple[str, ...] = ()
        if username:
            sql += " AND username = ?"
            params = (username,)
        return [
            TokenInfo(
                r["id"],
                r["username"],
                r["kind"],
                r["created_at"],
                r["expires_at"],
                r["last_used_at"],
            )
            for r in self.db.query(sql + " ORDER BY created_at", params)
        ]

    def purge_expired(self) -> int:
        """Delete expired sessions and tokens."""
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM api_tokens WHERE expires_at != '' AND expires_at <= ?",
                (_utc(self.clock()),),
            ).rowcount


class FailureLimiter:
    """Counts failed authentications per source address in a sliding window."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._failures.get(address)
        if not times:
            return None
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.max_failures:
            return None
        return max(times[0] + self.window - now, 0.1)

    def fail(self, address: str) -> None:
        """Count one failure for ``address``."""
        times = self._failures.setdefault(address, deque())
        self._failures.move_to_end(address)
        times.append(self.clock())
        while len(times) > self.max_failures:
            times.popleft()
        # A flood from many addresses must not grow memory without bound.
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: a user (via token or session), or anonymous."""

    user: model.User | None
    via: str  # "token" | "session" | "anonymous"

    @property
    def is_anonymous(self) -> bool:
        """Whether nobody logged in."""
        return self.user is None

    @property
    def name(self) -> str:
        """The username, or 'anonymous'."""
        return self.user.username if self.user else "anonymous"

    def sees_everything(self) -> bool:
        """Admins, and anonymous readers when the status page is open, see every project."""
        return self.user is None or self.user.is_admin


ANONYMOUS = Principal(None, "anonymous")

# Paths that authenticate themselves (webhooks by signature) or need no caller.
_PUBLIC_PATHS = ("/healthz", "/readyz", "/login", "/logout", "/favicon.ico")
_PUBLIC_PREFIXES = (API_PREFIX + "/webhooks/",)


class AuthMiddleware:
    """Resolves the caller of every HTTP request into ``scope["state"]["principal"]``."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: TokenStore,
        limiter: FailureLimiter,
        desired: Callable[[], model.DesiredState | None],
    ):
        self.app = app
        self.tokens = tokens
        self.limiter = limiter
        self.desired = desired

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            principal = self.authenticate(scope)
        except ApiError as error:
            await self._refuse(scope, error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def authenticate(self, scope: Scope) -> Principal:
        """The caller, or an ApiError (401, 403, 429, 503) saying why not."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        address = client_address(scope)
        method = scope["method"]
        authorization = headers.get("authorization", "")
        if authorization:
            wait = self.limiter.retry_after(address)
            if wait is not None:
                raise too_many_failures(wait)
            scheme, _, token = authorization.partition(" ")
            username = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
            if username is None:
                self.limiter.fail(address)
                raise ApiError(
                    401,
                    "unauthenticated",
                    "the bearer token is not valid",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            return Principal(self._user(username), "token")
        session = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        if session:
            username = self.tokens.lookup(session, kind="session")
            if username is not None:
                if method not in ("GET", "HEAD"):
                    raise ApiError(
                        403,
                        "read_only_session",
                        "a browser session may only read; send Authorization: Bearer to act",
                    )
                return Principal(self._user(username), "session")
        desired = self.desired()
        if (
            method in ("GET", "HEAD")
            and desired is not None
            and desired.settings.anonymous_status_page
        ):
            return ANONYMOUS
        raise ApiError(
            401,
            "unauthenticated",
            "log in or send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _user(self, username: str) -> model.User:
        desired = self.desired()
        if desired is None:
            raise ApiError(503, "not_ready", "no valid desired state is loaded yet")
        user = desired.users.get(username)
        if user is None:
            raise ApiError(
                401,
                "unauthenticated",
                f"user {username!r} is no longer declared in the config repo",
            )
        return user

    def _refuse(self, scope: Scope, error: ApiError) -> Response:
        path: str = scope["path"]
        # A person at a browser is sent to the login form instead of a JSON error.
        if error.status == 401 and not path.startswith(API_PREFIX) and scope["method"] == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + ("?" + query if query else "")
            from urllib.parse import quote

            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        return error.response()


def too_many_failures(wait: float) -> ApiError:
    """The 429 answer for an address over its failure budget."""
    return ApiError(
        429,
        "too_many_failures",
        "too many failed authentications from this address; try again later",
        headers={"Retry-After": str(int(wait + 0.999))},
    )


def client_address(scope: Scope) -> str:
    """The source address of a request (uvicorn's proxy_headers decides whom to trust)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


def session_cookie(token: str, max_age: int, secure: bool) -> str:
    """The Set-Cookie value for a session: HttpOnly, SameSite=Strict, whole site."""
    flags = f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    return flags + ("; Secure" if secure else "")


def cleared_session_cookie(secure: bool) -> str:
    """The Set-Cookie value that removes the session cookie."""
    return session_cookie("", 0, secure)


def session_token(cookie_header: str) -> str | None:
    """The session token of a Cookie header, if any."""
    return _cookie(cookie_header, SESSION_COOKIE)


# -- authorization ---------------------------------------------------------------------

#: Run actions → the matrix action that governs them.
RUN_ACTIONS: dict[str, permissions.Action] = {
    "deploy": permissions.Action.DEPLOY,
    "cancel": permissions.Action.DEPLOY,
    "promote": permissions.Action.DEPLOY,
    "approve": permissions.Action.APPROVE,
    "reject": permissions.Action.APPROVE,
    "rollback": permissions.Action.ROLLBACK,
    "view": permissions.Action.VIEW,
}


def not_found(what: str, name: str, field: str | None = None) -> ApiError:
    """The 404 answer, the same for missing things and things the caller may not see."""
    return ApiError(404, "not_found", f"{what} {name!r} does not exist", field)


def visible(principal: Principal, project: model.Project) -> bool:
    """Whether the caller may see ``project`` at all."""
    if principal.sees_everything():
        return True
    assert principal.user is not None
    return project.role_of(principal.user.username) is not None


def authorize(
    principal: Principal,
    desired: model.DesiredState | None,
    project: str,
    action: str,
    env: str | None = None,
) -> model.Project:
    """Check ``action`` (a key of RUN_ACTIONS) on ``project``/``env``; the project, or ApiError."""
    if desired is None:
        raise ApiError(503, "not_ready", "no valid desired state is loaded yet")
    found = desired.projects.get(project)
    if found is None or not visible(principal, found):
        raise not_found("project", project)
    protected = False
    if env is not None:
        environment = found.environments.get(env)
        if environment is None:
            raise not_found("environment", f"{project}/{env}")
        protected = environment.protected
    matrix_action = RUN_ACTIONS[action]
    if principal.user is None:
        if matrix_action is permissions.Action.VIEW:
            return found
        raise ApiError(401, "unauthenticated", "anonymous readers may not act; log in")
    role = found.role_of(principal.user.username)
    if not permissions.allowed(role, matrix_action, protected, principal.user.is_admin):
        needed = permissions.weakest_role(matrix_action, protected)
        where = f"{project}/{env}" if env else project
        kind = "protected environment " if protected else ""
        raise ApiError(
            403,
            "forbidden",
            f"{action} on {kind}{where} needs role {needed} or higher; {principal.name} is {role}",
        )
    return found
