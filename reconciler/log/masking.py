"""Masking of secret values in text: plain, base64 (any alignment) and JSON-escaped.

Pure, no I/O.  ``Masker`` replaces every known form of every secret with ``***``;
``StreamMasker`` does the same for output that arrives in chunks, holding back at most
(longest form - 1) characters until the next chunk or ``close`` decides them, so a
secret split across two writes is still caught.

Forms masked for each secret:

- the value itself, and each line of a multi-line value (keys, certificates);
- its JSON-escaped form (a multi-line value inside an API answer);
- its base64 encoding, standard and URL-safe, padded and unpadded;
- the characters of base64 that the value fully determines when it sits at byte offset
  1 or 2 inside a longer encoded blob (``base64 <<< "user:$PASSWORD"``), since the
  encoding of the same bytes differs with their alignment.

Values shorter than ``min_length`` are not masked: masking "a" or "42" everywhere would
make logs unreadable while protecting nothing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable

REPLACEMENT = "***"
DEFAULT_MIN_LENGTH = 3
# A shifted base64 fragment shorter than this matches ordinary words too often.
_MIN_FRAGMENT = 6
_MIN_LINE = 8


def _base64_forms(value: bytes) -> set[str]:
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode()
        # Characters whose 6 bits all come from the value: from ceil(8*offset/6) to
        # floor(8*(offset+len)/6) (exclusive).
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(value)) // 6
        fragment = encoded[start:end]
        if offset == 0:
            forms.add(encoded)
            forms.add(encoded.rstrip("="))
        if len(fragment) >= _MIN_FRAGMENT:
            forms.add(fragment)
    urlsafe = {f.replace("+", "-").replace("/", "_") for f in forms}
    return forms | urlsafe


def forms_of(secret: str, min_length: int = DEFAULT_MIN_LENGTH) -> set[str]:
    """Every string form of ``secret`` that a Masker hides."""
    if len(secret) < min_length:
        return set()
    forms = {secret}
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
    forms.add(escaped)
    if "\n" in secret:
        forms.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= _MIN_LINE)
    forms.update(_base64_forms(secret.encode()))
    return {f for f in forms if len(f) >= min_length}


class Masker:
    """Replaces every form of a set of secret values with ``***``."""

    __slots__ = ("_pattern", "_longest", "_count")

    def __init__(self, secrets: Iterable[str] = (), min_length: int = DEFAULT_MIN_LENGTH):
        forms: set[str] = set()
        count = 0
        for secret in secrets:
            found = forms_of(secret, min_length)
            count += bool(found)
            forms |= found
        # Longest first: at one position the regex takes the first alternative that
        # matches, and the longer form must win over a shorter one it contains.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._longest = len(ordered[0]) if ordered else 0
        self._count = count

    @property
    def longest(self) -> int:
        """Length of the longest form masked (what a stream must be able to hold back)."""
        return self._longest

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"Masker({self._count} secrets)"

    def mask(self, text: str) -> str:
        """``text`` with every secret form replaced by ``***``."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REPLACEMENT, text)

    def stream(self) -> StreamMasker:
        """A fresh streaming masker sharing these secrets."""
        return StreamMasker(self)

    def _split(self, buffer: str, final: bool) -> tuple[str, str]:
        """Masked text that is safe to emit now, and the raw tail to hold back."""
        if self._pattern is None:
            return buffer, ""
        if final:
            return self.mask(buffer), ""
        # Any secret starting before ``cut`` ends inside the buffer, so the regex has all
        # it needs to decide there; later positions wait for more data.
        cut = len(buffer) - (self._longest - 1)
        if cut <= 0:
            return "", buffer
        out: list[str] = []
        position = 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= cut:
                break
            out.append(buffer[position : match.start()])
            out.append(REPLACEMENT)
            position = match.end()
        boundary = max(cut, position)
        out.append(buffer[position:boundary])
        return "".join(out), buffer[boundary:]


class StreamMasker:
    """Masks text written in chunks; secrets split across chunks are still masked."""

    __slots__ = ("_masker", "_tail")

    def __init__(self, masker: Masker):
        self._masker = masker
        self._tail = ""

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the masked text that can be emitted now."""
        out, self._tail = self._masker._split(self._tail + chunk, final=False)
        return out

    def close(self) -> str:
        """Flush: return the masked remainder."""
        out, self._tail = self._masker._split(self._tail, final=True)
        return out

    @property
    def pending(self) -> int:
        """How many characters are held back."""
        return len(self._tail)

    def __repr__(self) -> str:
        return f"StreamMasker(pending={len(self._tail)})"
