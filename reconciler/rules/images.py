"""Image references: the target image template, tags, registry hosts, repositories.

Shared by the builder (which tags and pushes) and the container driver (which pulls
by digest). Pure string rules, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render_image(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{{ version }}``, ``{{ commit }}``, ``{{ short_commit }}``; refuse unknown names."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"target_image: unknown placeholder {{{{ {name} }}}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def tag_safe(version: str) -> str:
    """A version turned into a valid tag (Docker tags allow [A-Za-z0-9_.-], 128 chars)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", version).lstrip(".-")
    return cleaned[:128] or "latest"


def registry_of(image: str) -> str:
    """The registry host of an image reference (``docker.io`` when it names none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
