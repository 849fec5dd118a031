"""Pure Dockerfile checks: declared ARGs and build stages (image references: ``rules.images``).

No I/O: callers read the Dockerfile and pass its text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Build args Docker accepts without an ARG line (proxy settings, BuildKit's own knobs).
PREDEFINED_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "BUILDKIT_INLINE_CACHE",
        "BUILDKIT_CACHE_MOUNT_NS",
        "BUILDKIT_MULTI_PLATFORM",
        "BUILDKIT_SANDBOX_HOSTNAME",
        "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    }
)
_ARG = re.compile(r"^\s*ARG\s+(.+)$", re.IGNORECASE)
_STAGE = re.compile(r"^\s*FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    if pending:
        out.append(pending)
    return out


def declared_args(text: str) -> set[str]:
    """Names declared by ``ARG`` instructions anywhere in a Dockerfile."""
    names: set[str] = set()
    for line in _logical_lines(text):
        match = _ARG.match(line)
        if match:
            for word in match.group(1).split():
                names.add(word.split("=", 1)[0])
    return names


def stages(text: str) -> list[str]:
    """The names of the ``FROM … AS name`` stages of a Dockerfile."""
    found = []
    for line in _logical_lines(text):
        match = _STAGE.match(line)
        if match and match.group(1):
            found.append(match.group(1))
    return found


def unknown_args(text: str, args: Iterable[str]) -> list[str]:
    """Build args that the Dockerfile does not declare (Docker would silently ignore them)."""
    known = declared_args(text) | PREDEFINED_ARGS
    return sorted(a for a in args if a not in known)
