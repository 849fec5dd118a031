"""Who is asking and what they may do: API tokens, browser sessions, project permissions.

Authentication
    Users come from the config repo (``DesiredState.users``). API tokens are issued for
    a user (``quicflow token create USER``) and only their SHA-256 is stored
    (``reconciler.auth.tokens``, in the operational store); scripts send them as
    ``Authorization: Bearer <token>``. In a browser the login form takes the same token
    and sets a session cookie (HttpOnly, SameSite=Strict, random id stored hashed, with
    an expiry); logout deletes the session. Session cookies are read-only: run actions
    need the bearer header, so a page can never be tricked into acting.

    Failed authentication (a wrong bearer token or login) is counted per source address
    (``reconciler.auth.limiting``); past ``max_failures`` in ``window`` seconds the
    address's *bad* credentials get 429 until the window has passed, without being
    counted or looked into further. A good token is always let in: many users behind
    one NAT or proxy must not be locked out because one of them (or a stale script)
    keeps sending a wrong token. Guessing stays hopeless — a token is 256 random bits —
    and the limiter keeps floods of bad credentials cheap.

    The source address is the TCP peer, unless that peer is one of the configured
    ``trusted_proxies`` (addresses or CIDR networks): then ``X-Forwarded-For`` is read
    from the right, skipping trusted proxies, and the first other address is the
    client. From anyone else the header is ignored, so a client cannot pick the address
    it is counted (and recorded) under.

    Anonymous access is off. When the config repo sets
    ``settings.anonymous_status_page``, requests without credentials may read (GET) the
    status page and the read-only API it uses, as a viewer of every project.

Authorization
    Every project-scoped request is checked by the rules of
    ``reconciler.auth.permissions`` (``may_view``, ``may_act``, ``may_trigger_build``,
    ``may_read_credential_audit``) for the caller's role on that project. Callers who
    are not members of a project get **404** for it, exactly as for a project that does
    not exist, so project names do not leak; members whose role is too weak get **403**
    naming the weakest role that would do.
    ``is_admin`` users may do everything. Run actions map onto the matrix as: deploy,
    cancel and promote → ``deploy``; approve and reject → ``approve``; rollback →
    ``rollback`` (all three are stricter in protected environments).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from reconciler.auth import limiting, permissions
from reconciler.auth import tokens as api_tokens
from reconciler.gitops import model

SESSION_COOKIE = "quicflow_session"
API_PREFIX = "/api/release"


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

    def actor(self, project: model.Project | None = None) -> permissions.Actor:
        """The caller as the permission rules see them on ``project`` (their role there)."""
        if self.user is None:
            return permissions.ANONYMOUS
        role = project.role_of(self.user.username) if project is not None else None
        return permissions.Actor.on_project(self.user.username, role, self.user.is_admin)

    def sees_everything(self) -> bool:
        """Admins, and anonymous readers when the status page is open, see every project."""
        # The middleware lets anonymous readers in only while the status page is open.
        return permissions.sees_every_project(self.actor(), anonymous_status_page=True)


ANONYMOUS = Principal(None, "anonymous")

# Paths that authenticate themselves (webhooks by signature) or need no caller.
_PUBLIC_PATHS = ("/healthz", "/readyz", "/login", "/logout", "/favicon.ico")
_PUBLIC_PREFIXES = (API_PREFIX + "/webhooks/",)


class AuthMiddleware:
    """Resolves the caller of every HTTP request into ``scope["state"]["principal"]``."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: api_tokens.TokenStore,
        limiter: limiting.FailureLimiter,
        desired: Callable[[], model.DesiredState | None],
        trusted_proxies: Iterable[str] = (),
    ):
        self.app = app
        self.tokens = tokens
        self.limiter = limiter
        self.desired = desired
        self.proxies = proxy_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[_ADDRESS] = forwarded_address(scope, self.proxies)
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
            scheme, _, token = authorization.partition(" ")
            username = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
            if username is None:
                wait = self.limiter.retry_after(address)
                if wait is not None:
                    raise too_many_failures(wait)
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


_ADDRESS = "client_address"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies as networks; ValueError naming an entry that is neither."""
    networks = []
    for entry in proxies:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def forwarded_address(scope: Scope, proxies: tuple[Network, ...]) -> str:
    """The client of a request: the TCP peer, or — behind trusted proxies only — the
    nearest untrusted address of ``X-Forwarded-For``."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-forwarded-for":
            hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


def client_address(scope: Scope) -> str:
    """The source address of a request, as the middleware resolved it (see above)."""
    resolved = scope.get("state", {}).get(_ADDRESS)
    if resolved:
        return str(resolved)
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

#: Run actions → the matrix action that governs them (the rules are ``permissions``').
RUN_ACTIONS = permissions.RUN_ACTIONS


def not_found(what: str, name: str, field: str | None = None) -> ApiError:
    """The 404 answer, the same for missing things and things the caller may not see."""
    return ApiError(404, "not_found", f"{what} {name!r} does not exist", field)


def visible(principal: Principal, project: model.Project) -> bool:
    """Whether the caller may see ``project`` at all."""
    # An anonymous principal exists only while the status page is open (the middleware).
    return permissions.may_view(principal.actor(project), project.name, True).allowed


def refused(verdict: permissions.Verdict, what: str = "project", name: str = "") -> ApiError:
    """The answer to a refused ``verdict``: 401 anonymous, 404 non-member (``what`` ``name``
    is not shown to exist), 403 a role too weak."""
    if verdict.refusal is permissions.Refusal.ANONYMOUS:
        return ApiError(401, "unauthenticated", verdict.reason)
    if verdict.refusal is permissions.Refusal.NOT_MEMBER:
        return not_found(what, name)
    return ApiError(403, "forbidden", verdict.reason)


def require_login(principal: Principal, what: str) -> None:
    """Refuse anonymous readers ``what`` (records naming people and addresses): 401."""
    verdict = permissions.may_read_operations(principal.actor(), what)
    if not verdict.allowed:
        raise refused(verdict)


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
    verdict = permissions.may_act(principal.actor(found), action, project, env, protected)
    if not verdict.allowed:
        raise refused(verdict, "project", project)
    return found
