"""A bounded on-disk spool of request bodies a sink could not deliver yet.

Each batch is one file, ``<number>-<lines>.ndjson``, written to a temporary name,
flushed to disk and renamed, so a crash leaves whole batches or none. Batches are
replayed oldest first (``oldest``) and removed once delivered (``remove``); a batch is
therefore sent again only if the process dies between the receiver's answer and the
removal. Past ``max_bytes`` the oldest batches are deleted and their lines counted in
``dropped``: a long outage costs the oldest lines, never the reconciler's disk.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(\d{12})-(\d+)\.ndjson$")


@dataclass(frozen=True, slots=True)
class Batch:
    """One spooled request body."""

    path: Path
    number: int
    lines: int
    size: int

    def read(self) -> bytes:
        return self.path.read_bytes()


class Spool:
    """Spooled batches in one directory, at most ``max_bytes`` of them."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        for stale in self.directory.glob("*.tmp"):  # a write the last process did not finish
            stale.unlink(missing_ok=True)
        self._batches = sorted(self._scan(), key=lambda b: b.number)
        self._next = (self._batches[-1].number + 1) if self._batches else 1

    def _scan(self) -> list[Batch]:
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append(
                    Batch(path, int(match.group(1)), int(match.group(2)), path.stat().st_size)
                )
        return found

    @property
    def size(self) -> int:
        """Bytes spooled."""
        return sum(b.size for b in self._batches)

    @property
    def lines(self) -> int:
        """Lines spooled."""
        return sum(b.lines for b in self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def put(self, body: bytes, lines: int) -> None:
        """Spool one batch durably; drop the oldest batches past ``max_bytes``."""
        number = self._next
        self._next += 1
        path = self.directory / f"{number:012d}-{lines}.ndjson"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        self._batches.append(Batch(path, number, lines, len(body)))
        while len(self._batches) > 1 and self.size > self.max_bytes:
            oldest = self._batches.pop(0)
            self.dropped += oldest.lines
            oldest.path.unlink(missing_ok=True)

    def oldest(self) -> Batch | None:
        """The batch to replay next."""
        return self._batches[0] if self._batches else None

    def remove(self, batch: Batch) -> None:
        """Forget a delivered batch."""
        with contextlib.suppress(ValueError):
            self._batches.remove(batch)
        batch.path.unlink(missing_ok=True)
