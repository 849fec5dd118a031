"""Fault injection for the crash-point sweep: a reconciler process that SIGKILLs itself.

Imported by the child process of ``tests/engine/test_crash_sweep.py`` before the CLI
runs (``python -c "import crashpoints; crashpoints.main()" apply ...``). It wraps
``RunStore.put_step`` — every write of a step's outcome, the boundaries the engine
resumes from — and, driven by environment variables:

- ``QUICFLOW_TEST_TRACE=FILE`` appends one line per write (``index<TAB>key<TAB>status``);
- ``QUICFLOW_TEST_CRASH=INDEX:WHEN`` kills the process with SIGKILL at write ``INDEX``:
  ``before`` it reaches the store, ``after`` it is committed, or ``during`` the step it
  opened (``DELAY`` seconds after the write, while the step's script runs:
  ``INDEX:during:DELAY``). The write may also be named:
  ``KEY/STATUS!WHEN`` (``deploy:t1/succeeded!after``).

A real SIGKILL of a real process: nothing is flushed, no ``finally`` runs. This is test
code; the product has no crash hooks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm() -> None:
    from reconciler.store.runs import RunStore

    trace = os.environ.get("QUICFLOW_TEST_TRACE")
    index, named, when, delay = 0, "", "", 0.0
    spec = os.environ.get("QUICFLOW_TEST_CRASH", "")
    if spec[:1].isdigit():
        parts = spec.split(":")
        index, when = int(parts[0]), parts[1]
        delay = float(parts[2]) if len(parts) > 2 else 0.0
    elif spec:
        named, _, when = spec.rpartition("!")
    original = RunStore.put_step
    count = 0

    def put_step(self: RunStore, step: Any) -> Any:
        nonlocal count
        count += 1
        hit = count == index or f"{step.key}/{step.status.value}" == named
        if trace:
            with open(trace, "a", encoding="utf-8") as out:
                out.write(f"{count}\t{step.key}\t{step.status.value}\n")
        if hit and when == "before":
            _die()
        result = original(self, step)
        if hit and when == "after":
            _die()
        if hit and when == "during":
            threading.Timer(delay, _die).start()
        return result

    RunStore.put_step = put_step  # type: ignore[method-assign]


def main() -> None:
    arm()
    from reconciler.cli import main as cli

    sys.argv = ["quicflow", *sys.argv[1:]]
    cli()
