"""Message templates: Jinja2 in a sandbox, over a documented set of variables.

Variables (every one always defined; empty string when not known):

- ``project``, ``env``, ``version``, ``stage``, ``task``, ``target``, ``error``;
- ``status``: what happened, in words ("failed", "rolled back", "waiting for approval");
- ``event``: the event type (``run_failed``); ``at``: when (ISO 8601);
- ``severity``: the alert's severity (``critical`` / ``warning`` / ``info``); undefined
  for plain event notifications, so ``{{ severity | default('info') }}`` picks a default;
- ``run``: ``id``, ``state``, ``trigger``, ``url``;
- ``links``: ``run`` (the run's page), ``status_page``;
- ``trigger``: what started the run (poll, webhook, schedule, manual, rollback);
- ``committer``: who made the change (the config commit's author, or the actor);
- ``alert`` (alerts only): ``id``, ``rule``, ``title``, ``severity``, ``count``;
- ``entries`` (digests only): the folded alerts of the window, each with ``project``,
  ``env``, ``version``, ``error``, ``count``, ``run``, ``title``.

The sandbox refuses (``TemplateRefused``) any reach for Python internals — attributes
or items whose name starts with ``_`` (``{{ ''.__class__.__mro__ }}``), unsafe
callables — and calls or operators whose size argument would make a huge string
(``'x' * 10**9``, ``center(10**9)``). Secrets are masked twice: in every variable
before rendering (so a filter such as ``upper`` cannot disguise one) and in the output.
The output is cut at ``limit`` characters. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
import jinja2.nodes
import jinja2.sandbox

from reconciler import errors
from reconciler.events import Event, EventType
from reconciler.log.masking import Masker

#: Longest message text, in characters (Feishu refuses bodies over 20 KB).
DEFAULT_LIMIT = 4000
TRUNCATED = "…"
#: Where a run's page lives under the status page's public URL.
RUN_PATH = "/runs/{run_id}"
# Largest width, repeat count or exponent a template may ask for.
_MAX_SIZE = 10_000

STATUS: Mapping[EventType, str] = {
    EventType.RUN_STARTED: "started",
    EventType.RUN_SUCCEEDED: "succeeded",
    EventType.RUN_FAILED: "failed",
    EventType.RUN_CANCELLED: "cancelled",
    EventType.RUN_WAITING: "waiting",
    EventType.RUN_SUPERSEDED: "superseded",
    EventType.STAGE_STARTED: "stage started",
    EventType.STAGE_SUCCEEDED: "stage succeeded",
    EventType.STAGE_FAILED: "stage failed",
    EventType.TASK_STARTED: "task started",
    EventType.TASK_SUCCEEDED: "task succeeded",
    EventType.TASK_FAILED: "task failed",
    EventType.TASK_TIMED_OUT: "task timed out",
    EventType.APPROVAL_REQUESTED: "waiting for approval",
    EventType.APPROVED: "approved",
    EventType.REJECTED: "rejected",
    EventType.CANARY_STEP: "canary step",
    EventType.CANARY_FAILED: "canary failed",
    EventType.ROLLED_BACK: "rolled back",
    EventType.DEPLOY_FAILED: "deploy failed",
    EventType.DEPLOY_TIMEOUT: "deploy timed out",
    EventType.BUILD_SUCCEEDED: "build succeeded",
    EventType.BUILD_FAILED: "build failed",
}

# The run state an event implies when the event's data does not say.
_RUN_STATE: Mapping[EventType, str] = {
    EventType.RUN_STARTED: "running",
    EventType.RUN_SUCCEEDED: "succeeded",
    EventType.RUN_FAILED: "failed",
    EventType.RUN_CANCELLED: "cancelled",
    EventType.RUN_WAITING: "waiting_approval",
    EventType.RUN_SUPERSEDED: "superseded",
    EventType.APPROVAL_REQUESTED: "waiting_approval",
    EventType.ROLLED_BACK: "rolled_back",
}

DEFAULT_EVENT_TEMPLATE = (
    "{{ project }}{% if env %}/{{ env }}{% endif %}{% if version %} {{ version }}{% endif %}: "
    "{{ status }}"
    "{% if stage %}\nstage: {{ stage }}{% endif %}"
    "{% if task %}\ntask: {{ task }}{% endif %}"
    "{% if target %}\ntarget: {{ target }}{% endif %}"
    "{% if error %}\nerror: {{ error }}{% endif %}"
    "{% if trigger %}\ntrigger: {{ trigger }}{% endif %}"
    "{% if committer %}\ncommitter: {{ committer }}{% endif %}"
    "{% if links.run %}\n{{ links.run }}{% endif %}"
)

DEFAULT_ALERT_TEMPLATE = (
    "[{{ severity | upper }}] {{ alert.title }}"
    "{% if alert.count > 1 %} (×{{ alert.count }}){% endif %}"
    "{% if error %}\nerror: {{ error }}{% endif %}"
    "{% if trigger %}\ntrigger: {{ trigger }}{% endif %}"
    "{% if committer %}\ncommitter: {{ committer }}{% endif %}"
    "{% if links.run %}\n{{ links.run }}{% endif %}"
)

DEFAULT_DIGEST_TEMPLATE = (
    "[{{ severity | upper }}] {{ alert.title }}: {{ entries | length }} "
    "alert{{ 's' if entries | length != 1 }}"
    "{% for e in entries %}\n{{ loop.index }}. {{ e.project }}"
    "{% if e.env %}/{{ e.env }}{% endif %}{% if e.version %} {{ e.version }}{% endif %}"
    "{% if e.count > 1 %} (×{{ e.count }}){% endif %}"
    "{% if e.error %}: {{ e.error | truncate(160) }}{% endif %}{% endfor %}"
    "{% if links.status_page %}\n{{ links.status_page }}{% endif %}"
)


class TemplateRefused(errors.PermanentError):
    """A template was refused: invalid, reaching for internals, or failing to render."""


def _refuse_large(*args: Any, **kwargs: Any) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_SIZE:
            raise jinja2.sandbox.SecurityError(f"size argument {value} exceeds {_MAX_SIZE}")


def _bounded_filter(original: Any) -> Any:
    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _refuse_large(*args[1:], **kwargs)
        return original(*args, **kwargs)

    return bounded


class _Sandbox(jinja2.sandbox.SandboxedEnvironment):
    """The stock sandbox, but unsafe access raises at once instead of rendering nothing."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, keep_trailing_newline=False)
        # Filters whose numeric argument sizes the output.
        for name in ("center", "indent", "format", "wordwrap", "truncate"):
            self.filters[name] = _bounded_filter(self.filters[name])

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.sandbox.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is refused"
        )

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            _refuse_large(right)
        elif op == "*" and isinstance(left, int | str | list | tuple):
            _refuse_large(left, right)
        elif op == "%" and isinstance(left, str):
            # '%0999999999d' % 1 builds a huge string without a large operand.
            _refuse_large(*(int(d) for d in _digit_runs(left)))
        return super().call_binop(context, op, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # str.ljust / center / zfill / expandtabs and friends size their output by an
        # argument.
        _refuse_large(*args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _digit_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch.isdigit():
            current += ch
        elif current:
            runs.append(current)
            current = ""
    return [*runs, current] if current else runs


_ENVIRONMENT = _Sandbox()


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENVIRONMENT.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRefused(f"invalid template (line {exc.lineno}): {exc.message}") from None


def check(source: str) -> str | None:
    """Why ``source`` would be refused before it ever renders (syntax, internals), or None."""
    try:
        tree = _ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"invalid template (line {exc.lineno}): {exc.message}"
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else None
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else None
        if name and name.startswith("_"):
            return f"line {node.lineno}: access to {name!r} is refused (Python internals)"
    for const in tree.find_all(jinja2.nodes.Const):
        # ``attr('__class__')`` and ``'{0.__class__}'.format(x)`` spell the name in a string.
        if isinstance(const.value, str) and "__" in const.value:
            return f"line {const.lineno}: {const.value!r} names Python internals; refused"
    return None


def render(
    source: str,
    variables: Mapping[str, Any],
    *,
    masker: Masker | None = None,
    limit: int = DEFAULT_LIMIT,
) -> str:
    """Render ``source`` with ``variables``; masked, at most ``limit`` characters.

    Raises TemplateRefused when the template is invalid, reaches for internals or fails.
    """
    template = _compile(source)
    values = _masked(variables, masker) if masker else variables
    # Render a little past the limit so a secret straddling the cut is still whole
    # when the output is masked; stop early so a runaway loop cannot grow without end.
    budget = limit + (masker.longest if masker else 0)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(**values):
            chunks.append(chunk)
            size += len(chunk)
            if size > budget:
                break
    except jinja2.sandbox.SecurityError as exc:
        raise TemplateRefused(f"template refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside a user template is its fault
        raise TemplateRefused(f"template failed: {type(exc).__name__}: {exc}") from None
    text = "".join(chunks).strip()
    if masker:
        text = masker.mask(text)
    return truncate(text, limit)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATED), 0)] + TRUNCATED


def _masked(value: Any, masker: Masker) -> Any:
    if isinstance(value, str):
        return masker.mask(value)
    if isinstance(value, Mapping):
        return {k: _masked(v, masker) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, masker) for v in value]
    return value


def links(public_url: str | None, run_id: str) -> dict[str, str]:
    """The ``links`` variable: the run's page and the status page (empty without a URL)."""
    if not public_url:
        return {"run": "", "status_page": ""}
    base = public_url.rstrip("/")
    return {
        "run": base + RUN_PATH.format(run_id=run_id) if run_id else "",
        "status_page": base + "/",
    }


def variables(
    event: Event,
    *,
    public_url: str | None = None,
    severity: str = "",
    alert: Mapping[str, Any] | None = None,
    entries: list[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The documented template variables for ``event`` (and its alert or digest)."""
    data = event.data
    link = links(public_url, event.run_id)
    trigger = str(data.get("trigger") or "")
    values: dict[str, Any] = {
        "event": event.type.value,
        "at": event.at,
        "project": event.project,
        "env": event.env,
        "version": event.version,
        "stage": event.stage,
        "task": event.task,
        "target": event.target,
        "error": event.error,
        "status": STATUS.get(event.type, event.type.value.replace("_", " ")),
        "severity": severity,
        "trigger": trigger,
        "committer": str(data.get("committer") or data.get("actor") or ""),
        "run": {
            "id": event.run_id,
            "state": str(data.get("state") or _RUN_STATE.get(event.type, "")),
            "trigger": trigger,
            "url": link["run"],
        },
        "links": link,
        "alert": dict(alert or {}),
        "entries": list(entries or []),
    }
    if not severity:
        # Left undefined, so ``{{ severity | default('info') }}`` works as operators expect.
        del values["severity"]
    return values
