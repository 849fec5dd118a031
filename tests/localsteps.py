"""A reconciler stand-in for crash tests of local steps: a real process to SIGKILL.

``Reconciler(data, work).start(command_id, script, timeout)`` runs ``python -c CHILD``:
a process that builds a ``LocalExecutor`` over ``data`` (as the engine does), runs one
command on a local target whose work dir is ``work``, and prints the result (and the
output it was handed) as one JSON line -- then, with ``hang``, stays alive until killed,
so a test can kill it after the command ended. Also helpers to look at processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitrepos import ROOT

CHILD = r"""
import asyncio, dataclasses, json, sys
from pathlib import Path
from reconciler.targets.commands import TargetRef
from reconciler.targets.local import LocalExecutor

data, work, command_id, script, timeout, hang = sys.argv[1:]

async def main():
    executor = LocalExecutor(data_dir=Path(data))
    output = []
    result = await executor.run(
        TargetRef("t1", "local", work_dir=work),
        command_id,
        script,
        {"COUNTER": str(Path(work) / "counter")},
        None if timeout == "-" else float(timeout),
        lambda channel, text: output.append([channel, text]),
    )
    print(json.dumps({**dataclasses.asdict(result), "output": output}), flush=True)
    if hang == "hang":
        await asyncio.sleep(3600)

asyncio.run(main())
"""

#: Counts its runs in $COUNTER, says so, marks ``started`` in its work dir, then waits.
COUNTING = (
    'n=$(cat "$COUNTER" 2>/dev/null || echo 0); echo $((n + 1)) > "$COUNTER"\n'
    "echo started; touch started\n"
)


@dataclass
class Reconciler:
    """Starts stand-in reconciler processes over one data dir and one target work dir."""

    data: Path
    work: Path

    def start(
        self, command_id: str, script: str, timeout: float | None = None, hang: bool = False
    ) -> subprocess.Popen[str]:
        self.work.mkdir(parents=True, exist_ok=True)
        args = [str(self.data), str(self.work), command_id, script]
        args += ["-" if timeout is None else str(timeout), "hang" if hang else "no"]
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, command_id: str, script: str, timeout: float | None = None) -> dict[str, Any]:
        """Start one and wait for its result."""
        child = self.start(command_id, script, timeout)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        return json.loads(out)

    def started(self) -> bool:
        return (self.work / "started").exists()

    def runs(self) -> int:
        """How many times the counting script ran."""
        counter = self.work / "counter"
        return int(counter.read_text()) if counter.exists() else 0


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL a stand-in reconciler: nothing flushed, no ``finally`` runs."""
    child.kill()
    child.communicate(timeout=10)
    assert child.returncode == -9


def output_of(result: dict[str, Any], channel: str = "stdout") -> str:
    return "".join(text for name, text in result["output"] if name == channel)


def wait_for(condition: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(proc.name))
    return found
