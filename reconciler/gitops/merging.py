"""The three-level merge (project → environment → task), variable references, config hashes.

The rule, everywhere: the lower level wins; mappings merge key by key, recursively;
lists (and every other value) are replaced whole. Pure functions, no I/O.

``${NAME}`` in a variable's value is replaced by the value of variable NAME of the same
merged set, after merging: a project-level ``URL: http://${HOST}`` takes each
environment's (or task's) ``HOST``. ``$${`` stands for a literal ``${``. A reference
to a secret, to a built-in (``QUICFLOW_*``, known only when a run starts) or to an
undefined name, a cycle, or a malformed ``${…}`` is a problem the checker reports;
secrets are never copied into another value.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BUILTIN_PREFIX = "QUICFLOW_"


def merge(base: Mapping[str, Any] | None, override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` overlaid with ``override``: maps merge key by key, lists and scalars replace."""
    result: dict[str, Any] = dict(base or {})
    for key, value in (override or {}).items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = merge(current, value)
        else:
            result[key] = value
    return result


def merge_levels(*levels: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge any number of levels, highest first (project, environment, task)."""
    result: dict[str, Any] = {}
    for level in levels:
        result = merge(result, level)
    return result


def freeze(value: Any) -> Any:
    """A deep read-only copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-able form of a frozen value (dataclass-free)."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [thaw(v) for v in value]
    return value


def stable_hash(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys, no whitespace), 16 hex digits.

    Stable across processes and Python versions, so it can be stored in the state ref
    and compared by any later reconciler.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    # Only frozen mappings and odd values reach here: plain dicts, lists and tuples are
    # encoded directly, which keeps hashing thousands of configs cheap.
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


# -- variable references ---------------------------------------------------------------


class ReferenceProblemKind(StrEnum):
    SYNTAX = "syntax"  # a ``${`` that is not ``${NAME}``
    BUILTIN = "builtin"  # ``${QUICFLOW_…}``: only known when a run starts
    UNDEFINED = "undefined"  # no such variable in the merged set
    SECRET = "secret"  # secrets are never copied into another value
    CYCLE = "cycle"

    @property
    def depends_on_merge(self) -> bool:
        """Whether another level's variables could make (or fix) this problem."""
        return self in (
            ReferenceProblemKind.UNDEFINED,
            ReferenceProblemKind.SECRET,
            ReferenceProblemKind.CYCLE,
        )


@dataclass(frozen=True, slots=True)
class ReferenceProblem:
    """Why one variable's value cannot be expanded."""

    variable: str
    kind: ReferenceProblemKind
    message: str


class VariableReferenceError(ValueError):
    """A variable's ``${…}`` cannot be expanded (the checker reports these first)."""

    def __init__(self, problem: ReferenceProblem):
        super().__init__(problem.message)
        self.problem = problem


def as_text(value: Any) -> str:
    """A plain variable value as its environment-variable text (as the engine passes it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parts(name: str, value: str) -> list[tuple[bool, str]]:
    """``value`` split into (is_reference, text) parts; raises on a malformed ``${``."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    while True:
        at = value.find("${", pos)
        if at < 0:
            parts.append((False, value[pos:]))
            return parts
        if at > 0 and value[at - 1] == "$":
            # ``$${`` is a literal ``${``.
            parts.append((False, value[pos : at - 1] + "${"))
            pos = at + 2
            continue
        parts.append((False, value[pos:at]))
        end = value.find("}", at + 2)
        inner = value[at + 2 : end] if end >= 0 else value[at + 2 :]
        if end < 0 or not _NAME.fullmatch(inner):
            shown = value[at : end + 1] if end >= 0 else value[at:]
            raise VariableReferenceError(
                ReferenceProblem(
                    name,
                    ReferenceProblemKind.SYNTAX,
                    f"variable {name!r}: {shown!r} is not a reference; "
                    "write ${NAME} for another variable, or $${ for a literal ${",
                )
            )
        parts.append((True, inner))
        pos = end + 1


def _direct_problem(
    name: str, ref: str, variables: Mapping[str, Any], is_secret: Callable[[Any], bool]
) -> ReferenceProblem | None:
    if ref.upper().startswith(BUILTIN_PREFIX):
        return ReferenceProblem(
            name,
            ReferenceProblemKind.BUILTIN,
            f"variable {name!r} refers to ${{{ref}}}, a built-in known only when a run "
            f"starts; use ${ref} in the script instead",
        )
    if ref not in variables:
        return ReferenceProblem(
            name,
            ReferenceProblemKind.UNDEFINED,
            f"variable {name!r} refers to ${{{ref}}}, which is not defined",
        )
    if is_secret(variables[ref]):
        return ReferenceProblem(
            name,
            ReferenceProblemKind.SECRET,
            f"variable {name!r} refers to ${{{ref}}}, a secret; secrets are never copied "
            f"into other values: use ${ref} in the script instead",
        )
    return None


def reference_problems(
    variables: Mapping[str, Any], is_secret: Callable[[Any], bool]
) -> list[ReferenceProblem]:
    """Every problem of one merged set of variables, each on the variable at its root.

    A variable that only refers to a broken one is not reported on top of it.
    """
    problems: list[ReferenceProblem] = []
    refs: dict[str, list[str]] = {}
    for name, value in variables.items():
        if not isinstance(value, str):
            continue  # numbers, booleans, null and secret references hold no references
        try:
            found = [text for is_ref, text in _parts(name, value) if is_ref]
        except VariableReferenceError as exc:
            problems.append(exc.problem)
            continue
        direct = [p for p in (_direct_problem(name, r, variables, is_secret) for r in found) if p]
        if direct:
            problems.append(direct[0])
            continue
        refs[name] = found
    for name in refs:
        cycle = _cycle_from(name, refs)
        if cycle:
            problems.append(
                ReferenceProblem(
                    name,
                    ReferenceProblemKind.CYCLE,
                    f"variable {name!r} refers to itself: {' → '.join(cycle)}",
                )
            )
    return sorted(problems, key=lambda p: p.variable)


def _cycle_from(start: str, refs: Mapping[str, list[str]]) -> list[str] | None:
    """The shortest path of references from ``start`` back to itself, if there is one."""
    paths = [[start]]
    seen = {start}
    while paths:
        next_paths = []
        for path in paths:
            for ref in refs.get(path[-1], ()):
                if ref == start:
                    return [*path, start]
                if ref not in seen:
                    seen.add(ref)
                    next_paths.append([*path, ref])
        paths = next_paths
    return None


def expand_variables(
    variables: Mapping[str, Any], is_secret: Callable[[Any], bool]
) -> dict[str, Any]:
    """The set with every ``${NAME}`` in its string values replaced.

    Values without references keep their type; secrets stay as they are. Raises
    VariableReferenceError on the first problem ``reference_problems`` would report.
    """
    problems = reference_problems(variables, is_secret)
    if problems:
        raise VariableReferenceError(problems[0])
    done: dict[str, str] = {}

    def text_of(name: str) -> str:
        if name not in done:
            value = variables[name]
            if isinstance(value, str):
                done[name] = "".join(
                    text_of(t) if is_ref else t for is_ref, t in _parts(name, value)
                )
            else:
                done[name] = as_text(value)
        return done[name]

    out: dict[str, Any] = {}
    for name, value in variables.items():
        out[name] = text_of(name) if isinstance(value, str) else value
    return out
