"""Branch and tag filters as globs: ``main``, ``release/*``, ``feature/**``.

Glob rules (the ones GitHub Actions users expect for branch filters):

- ``*`` matches any run of characters except ``/``: ``release/*`` matches
  ``release/1.2`` but not ``release/1.2/hotfix``;
- ``**`` matches any run of characters including ``/``: ``release/**`` matches both;
  ``**/`` may also match nothing, so ``a/**/b`` matches ``a/b`` and ``a/x/y/b``;
- ``?`` matches one character except ``/``;
- ``[abc]``, ``[a-z]``, ``[!abc]`` / ``[^abc]`` match one character of (not of) a set;
  a ``]`` right after ``[`` (or ``[!``) is a literal member;
- ``\\`` escapes the next character; everything else matches itself, case-sensitively.

Invalid patterns (empty, unbalanced ``[``, ``***``, a trailing ``\\``) raise
``ValueError`` from ``compile_glob``; ``pattern_problems`` returns the same messages
for the config loader. Compiled patterns are cached, since a webhook matches the same
few filters over and over.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a branch glob into an anchored regular expression."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a branch pattern must be a non-empty string")
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            rest = pattern[i:]
            stars = len(rest) - len(rest.lstrip("*"))
            if stars > 2:
                raise ValueError(f"{pattern!r}: use '*' or '**', not {'*' * stars!r}")
            if stars == 2:
                i += 2
                if i < n and pattern[i] == "/":
                    # "**/" also matches zero directories: a/**/b matches a/b.
                    parts.append("(?:.*/)?")
                    i += 1
                else:
                    parts.append(".*")
            else:
                parts.append("[^/]*")
                i += 1
        elif char == "?":
            parts.append("[^/]")
            i += 1
        elif char == "[":
            text, i = _character_class(pattern, i)
            parts.append(text)
        elif char == "\\":
            if i + 1 >= n:
                raise ValueError(f"{pattern!r}: trailing '\\' escapes nothing")
            parts.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            parts.append(re.escape(char))
            i += 1
    try:
        return re.compile("".join(parts) + r"\Z", re.DOTALL)
    except re.error as error:  # e.g. a reversed range "[z-a]"
        raise ValueError(f"{pattern!r}: {error}") from None


def _character_class(pattern: str, start: int) -> tuple[str, int]:
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    members_start = i
    # A "]" first in the set is a member, as in shell globs: "[]x]".
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 1
    if i >= len(pattern):
        raise ValueError(f"{pattern!r}: '[' at position {start + 1} is never closed with ']'")
    members = pattern[members_start:i]
    escaped = "".join("\\" + c if c in "\\^[]" else c for c in members)
    if negate:
        # A negated set must still not match "/", or "[!a]" would cross directories.
        return f"[^/{escaped}]", i + 1
    return f"[{escaped}]", i + 1


def pattern_problems(patterns: Iterable[object]) -> list[str]:
    """Problems with a list of branch patterns, one message per bad pattern."""
    problems: list[str] = []
    for index, pattern in enumerate(patterns):
        try:
            compile_glob(pattern)  # non-strings are reported by compile_glob itself
        except (ValueError, TypeError) as error:
            problems.append(f"[{index}]: {error}")
    return problems


def matches(patterns: Iterable[str], name: str) -> bool:
    """Whether ``name`` (a branch or tag) matches any of ``patterns``; none matches nothing."""
    return any(compile_glob(pattern).match(name) is not None for pattern in patterns)
