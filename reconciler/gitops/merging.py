"""The three-level merge (project → environment → task) and stable config hashes.

The rule, everywhere: the lower level wins; mappings merge key by key, recursively;
lists (and every other value) are replaced whole. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any


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
