"""Helpers of the notification tests: real HTTP receivers on loopback, desired states.

The receivers are small Starlette apps served by uvicorn inside the test's event loop
on a free loopback port. They check what they get exactly as the providers document
it — a webhook's ``X-QuicFlow-Signature-256`` HMAC over the raw body; a Feishu custom
bot's ``timestamp`` + ``sign`` (HMAC-SHA256 keyed with ``timestamp + "\\n" + secret``
over an empty message, Base64), refused when more than an hour off — and can be told to
fail the first N attempts of each delivery, hang, or answer Feishu error codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.gitops import model

WEBHOOK_SECRET = "whsec-0123456789abcdef"
FEISHU_SECRET = "feishu-bot-secret-42"
# A deploy token that shows up in error text: it must never leave unmasked.
LEAKY_TOKEN = "ghp_Leaky7Token7Value7XYZ"


@dataclass
class Receiver:
    """What the loopback receivers were sent, and how they should answer."""

    base_url: str = ""
    fail_first: int = 0  # answer 500 (webhook) or a Feishu error this many times per key
    feishu_error: Mapping[str, Any] = field(
        default_factory=lambda: {"code": 9499, "msg": "too many request", "data": {}}
    )
    old_style_feishu: bool = False  # answer {"StatusCode": ...} like older bots
    reject_with: int = 0  # answer this status to every webhook request
    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    bodies: dict[str, Any] = field(default_factory=dict)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base_url + path

    def _accept(self, key: str, body: Any) -> None:
        if self.accepted[key]:
            # An idempotent receiver acknowledges a repeat but does not act on it again.
            self.duplicates += 1
            return
        self.accepted[key] += 1
        self.bodies[key] = body

    async def webhook(self, request: Request) -> Response:
        raw = await request.body()
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append({"path": "/webhook", "headers": dict(request.headers), "raw": raw})
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        given = request.headers.get("X-QuicFlow-Signature-256", "")
        if not hmac.compare_digest(expected, given):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        return self._answer_webhook(key, raw)

    async def unsigned(self, request: Request) -> Response:
        raw = await request.body()
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append({"path": "/unsigned", "headers": dict(request.headers), "raw": raw})
        return self._answer_webhook(key, raw)

    def _answer_webhook(self, key: str, raw: bytes) -> Response:
        if not key:
            return JSONResponse({"error": "no Idempotency-Key"}, status_code=400)
        self.attempts[key] += 1
        if self.reject_with:
            return JSONResponse({"error": "rejected"}, status_code=self.reject_with)
        if self.attempts[key] <= self.fail_first:
            return JSONResponse({"error": "try later"}, status_code=503)
        self._accept(key, json.loads(raw))
        return JSONResponse({"ok": True})

    async def feishu(self, request: Request) -> Response:
        raw = await request.body()
        key = request.headers.get("Idempotency-Key", "")
        body = json.loads(raw)
        self.requests.append({"path": "/feishu", "headers": dict(request.headers), "raw": raw})
        timestamp = body.get("timestamp", "")
        string_to_sign = f"{timestamp}\n{FEISHU_SECRET}".encode()
        sign = base64.b64encode(
            hmac.new(string_to_sign, digestmod=hashlib.sha256).digest()
        ).decode()
        if (
            not timestamp.isdigit()
            or abs(int(timestamp) - time.time()) > 3600
            or body.get("sign") != sign
        ):
            self.bad_signatures += 1
            # Feishu answers HTTP 200 with a non-zero code when the signature is wrong.
            return JSONResponse(
                {
                    "code": 19021,
                    "msg": "sign match fail or timestamp is not within one hour from current time",
                    "data": {},
                }
            )
        self.attempts[key] += 1
        if self.attempts[key] <= self.fail_first:
            error = dict(self.feishu_error)
            if self.old_style_feishu:
                error = {"StatusCode": error["code"], "StatusMessage": error["msg"]}
            return JSONResponse(error)
        self._accept(key, body)
        if self.old_style_feishu:
            return JSONResponse({"Extra": None, "StatusCode": 0, "StatusMessage": "success"})
        return JSONResponse({"code": 0, "data": {}, "msg": "success"})

    async def slow(self, request: Request) -> Response:
        await request.body()
        self.requests.append({"path": "/slow", "headers": dict(request.headers), "raw": b""})
        await self.release.wait()
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/webhook", self.webhook, methods=["POST"]),
                Route("/unsigned", self.unsigned, methods=["POST"]),
                Route("/feishu", self.feishu, methods=["POST"]),
                Route("/slow", self.slow, methods=["POST"]),
            ]
        )


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve ``receiver`` with uvicorn on a free loopback port for the block's duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        receiver.app(), log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        receiver.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield receiver
    finally:
        receiver.release.set()
        server.should_exit = True
        await task
        sock.close()


def callback(
    name: str,
    url: str,
    *,
    type: str = "webhook",
    events: tuple[str, ...] = (),
    secret: str | None = None,
    template: str | None = None,
    format: str | None = None,
    attempts: int = 3,
    backoff: float = 0.01,
    max_backoff: float = 0.05,
    timeout: float = 2.0,
    enabled: bool = True,
    project: str | None = None,
) -> model.Callback:
    """A callback as the loader builds it."""
    return model.Callback(
        name=name,
        type=type,
        url=url,
        events=events,
        secret=secret,
        format=format,
        template=template,
        retry={
            "attempts": attempts,
            "backoff": backoff,
            "max_backoff": max_backoff,
            "timeout": timeout,
        },
        enabled=enabled,
        project=project,
    )


def environment(project: str, name: str, tier: str) -> model.Environment:
    """A minimal environment of ``tier``."""
    return model.Environment(
        project=project,
        name=name,
        version="1.0.0",
        tier=tier,
        protected=tier == "prod",
        strategy=model.Strategy(),
        deploy=model.DeployConfig(model.DeployType.SCRIPT),
        build=model.BuildConfig(),
        pipeline=model.Pipeline(()),
    )


def desired_state(
    *,
    callbacks: tuple[model.Callback, ...] = (),
    alert_rules: tuple[model.AlertRule, ...] = (),
    projects: Mapping[str, tuple[tuple[model.Callback, ...], tuple[model.AlertRule, ...]]]
    | None = None,
    public_url: str | None = "https://quicflow.example.com",
) -> model.DesiredState:
    """A desired state with global callbacks/rules and projects (each with prod, staging,
    dev and a ``live`` environment of tier prod)."""
    built = {}
    for name, (own_callbacks, own_rules) in (projects or {"shop": ((), ())}).items():
        envs = {
            "prod": environment(name, "prod", "prod"),
            "live": environment(name, "live", "prod"),
            "staging": environment(name, "staging", "staging"),
            "dev": environment(name, "dev", "dev"),
        }
        built[name] = model.Project(
            name=name,
            members=(),
            environments=envs,
            callbacks=own_callbacks,
            alert_rules=own_rules,
        )
    return model.DesiredState(
        commit="0" * 40,
        settings=model.Settings(public_url=public_url),
        users={},
        projects=built,
        callbacks=callbacks,
        alert_rules=alert_rules,
    )


class FakeClock:
    """A clock the test moves by hand (epoch seconds)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SleepRecorder:
    """An injectable ``sleep`` that records each requested delay and yields at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
