"""How an agent starts a step's process: real processes, found on the step's own PATH."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agent import spawning


def _script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


async def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, bytes, bytes]:
    process = await spawning.StepProcess.start(argv, cwd=str(cwd), env=env, with_stdin=False)
    out, err = await process.stdout.read(), await process.stderr.read()
    return await process.wait(), out, err


async def test_a_step_runs_in_its_directory_with_its_environment_and_exit_code(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    _script(bin_dir, "step", 'echo "in $(pwd) as $GREETING"; echo oops >&2; exit 3')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GREETING": "hello"}
    code, out, err = await _run(["step"], env, tmp_path)
    assert (code, out.decode(), err.decode()) == (3, f"in {tmp_path} as hello\n", "oops\n")


async def test_a_program_moved_after_it_was_found_is_searched_for_again(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    moved = _script(first, "deploy-it", "echo first")
    env = {"PATH": f"{first}:{second}:/usr/bin:/bin"}
    assert (await _run(["deploy-it"], env, tmp_path))[:2] == (0, b"first\n")
    assert spawning.resolve("deploy-it", env) == str(moved)  # remembered

    moved.unlink()
    _script(second, "deploy-it", "echo second")
    assert (await _run(["deploy-it"], env, tmp_path))[:2] == (0, b"second\n")

    (second / "deploy-it").unlink()
    with pytest.raises(FileNotFoundError):
        await _run(["deploy-it"], env, tmp_path)


async def test_a_killed_step_reports_the_signal(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    process = await spawning.StepProcess.start(
        ["sleep", "30"], cwd=str(tmp_path), env=env, with_stdin=False
    )
    assert process.returncode is None
    os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the step
    assert await process.wait() == -signal.SIGKILL
