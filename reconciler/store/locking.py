"""One engine per data dir: an OS lock held by ``serve`` or ``apply`` for its lifetime.

Two engines on one data dir would each start a hub and a local agent (the second one
revoking the first one's agent token) and interleave runs in one store. So the
commands that run the engine take ``DataDirLock`` first: ``flock`` on
``<data>/engine.lock``, which the kernel releases when the process ends however it
ends (no stale lock after a crash). The file holds the holder's pid and command, for
the error the second process prints. Commands that only read or record a decision
(``approve``, ``history``, ``plan``, ``token`` …) do not take it and keep working
beside a running server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from pathlib import Path
from types import TracebackType

from reconciler.errors import QuicFlowError

LOCK_FILE = "engine.lock"


class DataDirInUse(QuicFlowError):
    """Another process runs the engine on this data dir."""


class DataDirLock:
    """The engine lock of one data dir; ``acquire`` raises ``DataDirInUse`` when held."""

    def __init__(self, data_dir: Path, command: str):
        self.data_dir = Path(data_dir)
        self.command = command
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited: a deploy script the engine starts (and that may outlive it) must
        # not keep the data dir locked after the engine is gone.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.data_dir.resolve()} is in use by another quicflow process "
                f"({holder or 'pid unknown'}): stop it first, or give this command another "
                "--data directory"
            ) from None
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, quicflow {self.command}, since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the lock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""
