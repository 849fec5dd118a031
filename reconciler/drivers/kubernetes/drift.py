"""Drift: where a live object differs from what we applied — in our fields only.

Pure. ``differences`` walks the *desired* object (what our field manager applies) and
compares each of its leaves with the live object: fields other managers or the API
server added (defaults, status, annotations of controllers) are never looked at, so
there is no diff noise. Lists of objects with a ``name`` (containers, env) are paired
by name, as server-side apply merges them; other lists compare whole.

``watched`` is the part of a Deployment that drift detection judges: replicas and the
image of our container (what ``kubectl scale`` and ``kubectl set image`` change);
a Service is judged on its selector (which color serves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Every leaf of ``desired`` whose live value differs, as ``path: live X, applied Y``."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [f"{path or '.'}: missing"] if live is None else [f"{path}: not an object"]
        found: list[str] = []
        for key, value in desired.items():
            found += differences(value, live.get(key), f"{path}.{key}" if path else str(key))
        return found
    if _named_list(desired):
        live_items = {item.get("name"): item for item in (live or []) if isinstance(item, Mapping)}
        found = []
        for item in desired:
            found += differences(item, live_items.get(item["name"]), f"{path}[{item['name']}]")
        return found
    if desired != live:
        return [f"{path}: live {_short(live)}, applied {_short(desired)}"]
    return []


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(item, Mapping) and "name" in item for item in value)
    )


def _short(value: Any) -> str:
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def watched(deployment: Mapping[str, Any], container: str) -> dict[str, Any]:
    """The fields of an applied Deployment that drift detection compares."""
    spec = deployment["spec"]
    containers = spec["template"]["spec"]["containers"]
    image = next(c["image"] for c in containers if c["name"] == container)
    return {
        "spec": {
            "replicas": spec["replicas"],
            "template": {"spec": {"containers": [{"name": container, "image": image}]}},
        }
    }
