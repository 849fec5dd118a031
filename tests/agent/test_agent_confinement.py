"""What an agent agrees to run: inside its work root, of accepted deploy types, clean env.

Executor-level (no network); ``tests/hub/test_hub_claims.py`` checks the same refusals
arriving over QUIC from a hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import executing, protocol
from agent.protocol import ExecRequest, FrameKind, GitPullRequest


class Stream:
    """Stands in for a QUIC stream: keeps the frames the executor sends."""

    def __init__(self) -> None:
        self.decoder = protocol.FrameDecoder()
        self.frames: list[protocol.Frame] = []
        self.ended = asyncio.Event()

    def __call__(self, data: bytes, end_stream: bool) -> None:
        self.frames += self.decoder.feed(data)
        if end_stream:
            self.ended.set()

    def output(self) -> str:
        return b"".join(f.data for f in self.frames if f.kind is FrameKind.OUTPUT).decode()

    async def result(self) -> protocol.ExecResult:
        await asyncio.wait_for(self.ended.wait(), 10)
        return protocol.result_from_meta(self.frames[-1].meta)


async def run(
    executor: executing.Executor, request: protocol.Request
) -> tuple[protocol.ExecResult, str]:
    stream = Stream()
    executor.submit(request, stream)
    result = await stream.result()
    return result, stream.output()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def executor(root: Path) -> Iterator[executing.Executor]:
    instance = executing.Executor(root)
    yield instance
    instance.close()


async def test_relative_and_inside_directories_are_created_and_used(
    executor: executing.Executor, root: Path
) -> None:
    result, output = await run(
        executor, ExecRequest(command_id="a", script="pwd", cwd="quicflow/shop/prod")
    )
    assert result.ok and output == f"{root}/quicflow/shop/prod\n"
    result, output = await run(
        executor, ExecRequest(command_id="b", script="pwd", cwd=str(root / "x"))
    )
    assert result.ok and output == f"{root}/x\n"


@pytest.mark.parametrize("cwd", ["/etc", "..", "quicflow/../../elsewhere", "/"])
async def test_a_directory_outside_the_work_root_is_refused(
    executor: executing.Executor, root: Path, tmp_path: Path, cwd: str
) -> None:
    marker = tmp_path / "ran"
    result, _ = await run(executor, ExecRequest(command_id="c", script=f"touch {marker}", cwd=cwd))
    assert result.exit_code is None
    assert result.error == f"refused: cwd {cwd!r} is outside this agent's work root {root}"
    assert not marker.exists()
    # Refused before it started: the id is not burnt, and nothing was created outside.
    assert not executor.store.was_started("c")
    assert not (tmp_path / "elsewhere").exists()


async def test_a_symlink_out_of_the_work_root_is_refused(
    executor: executing.Executor, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    result, _ = await run(executor, ExecRequest(command_id="s", script="pwd", cwd="link/app"))
    assert result.error is not None and "outside this agent's work root" in result.error
    assert not (outside / "app").exists()


async def test_git_directories_are_confined_too(executor: executing.Executor, root: Path) -> None:
    result, _ = await run(
        executor,
        GitPullRequest(command_id="g", repo_url="/nowhere", ref="main", directory="/srv/app"),
    )
    assert (
        result.error
        == f"refused: git directory '/srv/app' is outside this agent's work root {root}"
    )


async def test_only_accepted_deploy_types_run(root: Path, tmp_path: Path) -> None:
    executor = executing.Executor(root, deploy_types={"container", "git_pull"})
    try:
        marker = tmp_path / "ran"
        result, _ = await run(executor, ExecRequest(command_id="1", script=f"touch {marker}"))
        assert result.error == (
            "refused: this agent does not accept 'script' commands (it accepts: container,"
            " git_pull; see --allow-deploy-types)"
        )
        assert not marker.exists()
        result, output = await run(
            executor, ExecRequest(command_id="2", argv=["echo", "ok"], deploy_type="container")
        )
        assert result.ok and output == "ok\n"
        # A git_pull restart script is shell from the config repo: a 'script' command.
        result, _ = await run(
            executor,
            GitPullRequest(
                command_id="3", repo_url="/r", ref="main", directory="app", restart_script="true"
            ),
        )
        assert result.error is not None and "restart script is a 'script' command" in result.error
    finally:
        executor.close()


async def test_steps_see_only_passed_variables_and_their_own(root: Path) -> None:
    own = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "QUICFLOW_AGENT_TOKEN": "qfa_secret",
        "AWS_SECRET_ACCESS_KEY": "hidden",
    }
    executor = executing.Executor(root, base_env=own, pass_env=executing.PASS_ENV)
    try:
        result, output = await run(
            executor, ExecRequest(command_id="e", argv=["env"], env={"APP": "shop"})
        )
    finally:
        executor.close()
    assert result.ok
    assert sorted(output.splitlines()) == ["APP=shop", "LC_ALL=C.UTF-8", "PATH=/usr/bin:/bin"]


def test_step_environment_without_a_pass_list_keeps_everything() -> None:
    own = {"A": "1", "B": "2"}
    assert executing.step_environment(own, None, {"B": "3"}) == {"A": "1", "B": "3"}
    assert executing.step_environment(own, ("A",), {}) == {"A": "1"}


def test_a_work_dir_outside_a_given_work_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not inside the work root"):
        executing.Executor(tmp_path / "a", work_root=tmp_path / "b")
