"""Which stage, task and target a log line is written for: the steps the writer is inside.

The engine enters a scope for every step it runs (``entered(str(step_key))``); the
steps nest (a deploy task holds the deploy and verify steps of each target), so the
context holds the path of step keys from the outermost in. ``fields`` reads it into
``stage``, ``task`` and ``target``; a log writer asks for them when a line is written,
so a line says where in the pipeline it came from without every caller passing it.

Pure: a context variable, no I/O.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from reconciler.runs import StepKey, StepKind

_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("log_scope", default=())
#: Steps whose name is a target (``deploy:web-1@blue``).
_ON_TARGET = frozenset(
    {StepKind.DEPLOY, StepKind.VERIFY, StepKind.ROLLBACK, StepKind.RETIRE, StepKind.SWITCH}
)


@contextlib.contextmanager
def entered(key: str) -> Iterator[None]:
    """Inside this block, log lines are written for step ``key`` (within the enclosing ones)."""
    token = _path.set((*_path.get(), key))
    try:
        yield
    finally:
        _path.reset(token)


def current() -> tuple[str, ...]:
    """The step keys the caller is inside, outermost first."""
    return _path.get()


def fields(path: tuple[str, ...] | None = None) -> tuple[str, str, str]:
    """(stage, task, target) of a step path (the current one by default)."""
    stage = task = target = ""
    for text in _path.get() if path is None else path:
        try:
            key = StepKey.parse(text)
        except ValueError:
            continue
        if key.kind is StepKind.STAGE or key.kind is StepKind.APPROVAL:
            stage = key.name
        elif key.kind is StepKind.TASK:
            stage, _, task = key.name.partition("/")
        elif key.kind is StepKind.ON_TARGET:
            parts = key.name.split("/", 2)
            if len(parts) == 3:
                stage, task, target = parts
        elif key.kind in _ON_TARGET:
            target = key.name
    return stage, task, target
