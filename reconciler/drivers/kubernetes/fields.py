"""Field sets of server-side apply: what one field manager owns of a live object.

Pure. ``metadata.managedFields`` holds, per manager, a ``FieldsV1`` tree (``f:name``
for a field, ``k:{…}`` for a list item by its key, ``.`` for the item itself).
``owned`` cuts the live object down to one manager's fields — for our manager that is
exactly what we applied last, so a later apply (scaling a retired color to zero) can
send the same intent with one value changed instead of dropping fields it left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def fields_of(obj: Mapping[str, Any], manager: str) -> Mapping[str, Any] | None:
    """The ``FieldsV1`` tree ``manager`` holds by Apply, or None."""
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation", "Apply") == "Apply":
            return entry.get("fieldsV1") or {}  # type: ignore[no-any-return]
    return None


def owned(value: Any, tree: Mapping[str, Any]) -> Any:
    """The parts of ``value`` named by the FieldsV1 ``tree``."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for token, sub in tree.items():
            if not token.startswith("f:") or token[2:] not in value:
                continue
            key = token[2:]
            children = {k: v for k, v in sub.items() if k != "."}
            out[key] = owned(value[key], children) if children else value[key]
        return out
    if isinstance(value, list):
        items = []
        for token, sub in tree.items():
            if not token.startswith("k:"):
                continue
            wanted = json.loads(token[2:])
            for item in value:
                if isinstance(item, Mapping) and all(item.get(k) == v for k, v in wanted.items()):
                    children = {k: v for k, v in sub.items() if k != "."}
                    items.append({**wanted, **owned(item, children)})
        return items
    return value


def applied_config(obj: Mapping[str, Any], manager: str) -> dict[str, Any] | None:
    """What ``manager`` last applied to ``obj``, as an apply body (None if it applied nothing)."""
    tree = fields_of(obj, manager)
    if tree is None:
        return None
    meta = obj["metadata"]
    body: dict[str, Any] = owned(dict(obj), tree)
    body["apiVersion"] = obj["apiVersion"]
    body["kind"] = obj["kind"]
    body["metadata"] = {
        **(body.get("metadata") or {}),
        "name": meta["name"],
        "namespace": meta["namespace"],
    }
    return body
