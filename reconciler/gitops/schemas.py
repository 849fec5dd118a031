"""The JSON Schemas of every config file kind, and validation with readable messages.

Schemas ship as package data (``reconciler.schemas``, the top-level ``schemas/``
directory). Validation is the one place where shapes are checked; the rest of the code
trusts them. Messages name the key or value at fault in words a config author knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema
import referencing

KINDS = ("quicflow", "project", "environment", "credentials")
_BASE = "https://quicflow.dev/schemas/"


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """One schema violation: where (JSON path parts) and what."""

    path: tuple[str | int, ...]
    message: str
    at_key: bool = False


def schema_text(name: str) -> str:
    """The text of a shipped schema file, e.g. ``project.schema.json``."""
    return resources.files("reconciler.schemas").joinpath(name).read_text(encoding="utf-8")


@cache
def _registry() -> referencing.Registry:
    resources_ = []
    for kind in (*KINDS, "definitions"):
        contents = json.loads(schema_text(f"{kind}.schema.json"))
        resources_.append((contents["$id"], referencing.Resource.from_contents(contents)))
    return referencing.Registry().with_resources(resources_)


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for one file kind, over the schema with every ``$ref`` inlined.

    Resolving references costs about a third of validation time in jsonschema, and
    thousands of files are validated on a cold load; our schemas are not recursive, so
    inlining them once is exact.
    """
    schema = _registry().contents(f"{_BASE}{kind}.schema.json")
    cls = jsonschema.validators.validator_for(schema)
    return cls(_inline(schema, f"{_BASE}{kind}.schema.json"))


def _inline(node: Any, base: str) -> Any:
    """``node`` with every ``$ref`` replaced by (a copy of) what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            target_url = (
                ref
                if ref.startswith("http")
                else (_BASE + ref if not ref.startswith("#") else base + ref)
            )
            resolved = _registry().resolver(base_uri=base).lookup(target_url)
            doc_url = target_url.split("#", 1)[0]
            inlined = _inline(resolved.contents, doc_url)
            siblings = {k: _inline(v, base) for k, v in node.items() if k != "$ref"}
            return {**inlined, **siblings} if siblings else inlined
        return {k: _inline(v, base) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, base) for v in node]
    return node


@cache
def fast_check(kind: str) -> Callable[[Any], Any]:
    """A compiled (fastjsonschema) check of the same inlined schema: the fast path.

    jsonschema stays the validator that explains problems; this only answers "is it
    valid?" about ten times faster, which matters when thousands of files load cold.
    tests/gitops/test_schemas.py checks that both agree on every example and broken file.
    """
    schema = {k: v for k, v in validator(kind).schema.items() if k != "$schema"}
    return fastjsonschema.compile(schema)


def is_valid(kind: str, document: Any) -> bool:
    try:
        fast_check(kind)(document)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def validate(kind: str, document: Any) -> list[SchemaProblem]:
    """Every schema problem of a parsed document, in document order."""
    if is_valid(kind, document):  # the fast path: most files are fine
        return []
    v = validator(kind)
    problems: list[SchemaProblem] = []
    redact = kind == "credentials"  # values there may be secrets committed by mistake
    for error in v.iter_errors(document):
        # jsonschema raises 'required' once per missing key and _explain lists them all
        problems.extend(p for p in _explain(error, redact) if p not in problems)
    return problems


def _explain(error: jsonschema.ValidationError, redact: bool = False) -> Iterator[SchemaProblem]:
    path = tuple(error.absolute_path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if "propertyNames" in error.schema_path:
        yield SchemaProblem(
            (*path, instance),
            f"invalid name {instance!r} (must match {error.validator_value})",
            at_key=True,
        )
        return
    if keyword == "minProperties" and not instance:
        what = schema.get("description", "")
        yield SchemaProblem(path, f"empty mapping. {what}".strip())
        return
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        for key in instance:
            if key not in schema.get("properties", {}):
                hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
                yield SchemaProblem((*path, key), f"unknown key {key!r}{hint}", at_key=True)
        return
    if keyword == "required":
        missing = [
            k for k in error.validator_value if isinstance(instance, dict) and k not in instance
        ]
        for key in missing:
            yield SchemaProblem(path, f"missing required key {key!r}")
        return
    if keyword == "type":
        expected = error.validator_value
        names = " or ".join(expected) if isinstance(expected, list) else expected
        message = f"expected {names}, got {_kind(instance)} {_short(instance, redact)}".rstrip()
        if path and path[-1] == "version" and isinstance(instance, int | float):
            message += " (quote versions: 1.10 unquoted reads as the number 1.1)"
        yield SchemaProblem(path, message)
        return
    if keyword == "enum":
        options = ", ".join(str(o) for o in error.validator_value)
        yield SchemaProblem(path, f"{_short(instance, redact)} is not one of: {options}")
        return
    if keyword == "pattern":
        what = schema.get("description")
        text = f"{_short(instance, redact)} is not valid"
        yield SchemaProblem(
            path, f"{text}: {what}" if what else f"{text} (must match {error.validator_value})"
        )
        return
    if keyword == "oneOf" and path and any(p == "variables" for p in path if isinstance(p, str)):
        if isinstance(instance, dict):
            inner = [e for e in error.context if e.validator != "type"]
            detail = f": {inner[0].message}" if inner else ""
            yield SchemaProblem(
                path, "a variable is a plain value or {secret: NAME, field: ...}" + detail
            )
        else:
            yield SchemaProblem(
                path, f"a variable must be a string, number, boolean or null, got {_kind(instance)}"
            )
        return
    if keyword in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "uniqueItems",
    ):
        message = error.message.replace("is too short", "has too few items")
        yield SchemaProblem(
            path, f"the value fails '{keyword}: {error.validator_value}'" if redact else message
        )
        return
    yield SchemaProblem(path, f"the value fails '{keyword}'" if redact else error.message)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _short(value: Any, redact: bool = False) -> str:
    if redact:
        return "the value"
    text = repr(value) if not isinstance(value, dict | list) else ""
    return text if len(text) <= 60 else text[:57] + "..."
