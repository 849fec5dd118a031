"""Which process owns a run, and whether that process is still alive.

Several processes may share one data dir (``quicflow serve`` and a ``quicflow apply``
beside it, or two ``apply`` started by hand). A run records its owner — host, pid and
the process's start time, so a recycled pid is not mistaken for the owner — and
recovery only interrupts runs whose owner is gone; a live owner's run is left to it.
An owner on another host cannot be checked from here: recovery treats it as gone (a
shared PostgreSQL store will need leases with a heartbeat instead).
"""

from __future__ import annotations

import os
import socket

from agent import spawning


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is not there)."""
    identity = spawning.identify(pid)
    if identity is None:
        return ""
    return "zombie" if identity.state == "Z" else str(identity.start_time)


def current() -> str:
    """This process, as recorded on the runs it starts: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def here(owner: str | None) -> bool:
    """Whether ``owner`` (from ``current()``) is a process of this host, which ``alive`` can check."""
    return bool(owner) and str(owner).rsplit(":", 2)[0] == socket.gethostname()


def alive(owner: str | None) -> bool:
    """Whether ``owner`` (from ``current()``) is a live process on this host."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid_text, started = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now = _start_time(pid)
    return now != "zombie" and (not started or not now or now == started)
