"""The local executor: commands as subprocesses on the reconciler's own host (demo, tests).

Each command runs in a new session (its own process group), so a timeout or a cancel
kills the whole tree, never just the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from reconciler.targets.commands import CommandResult, OutputHandler, TargetRef


class LocalExecutor:
    """Runs commands as local subprocesses in the target's work directory."""

    def __init__(self, shell: str = "/bin/sh"):
        self.shell = shell

    async def run(
        self,
        target: TargetRef,
        command_id: str,
        script: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_output: OutputHandler,
        cwd: str | None = None,
    ) -> CommandResult:
        workdir = Path(cwd or target.work_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # The script is passed as one argv element to the shell: never interpolated.
        proc = await asyncio.create_subprocess_exec(
            self.shell,
            "-c",
            script,
            cwd=str(workdir),
            env={**_base_env(), **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", on_output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", on_output)),
        ]
        timed_out = cancelled = False
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        except asyncio.CancelledError:
            cancelled = True
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        finally:
            await asyncio.gather(*pumps, return_exceptions=True)
        code = proc.returncode
        return CommandResult(
            exit_code=None if timed_out else code,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            signal=-code if code is not None and code < 0 else None,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, channel: str, on_output: OutputHandler) -> None:
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        on_output(channel, chunk.decode("utf-8", "replace"))


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}
