"""Running commands without the network: output frames, flow control, ids, timeout, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import executing, protocol
from agent.protocol import ExecRequest, FrameKind


class Stream:
    """Stands in for a QUIC stream: decodes what the executor sends."""

    def __init__(self) -> None:
        self.decoder = protocol.FrameDecoder()
        self.frames: list[protocol.Frame] = []
        self.ended = asyncio.Event()

    def __call__(self, data: bytes, end_stream: bool) -> None:
        self.frames += self.decoder.feed(data)
        if end_stream:
            self.ended.set()

    def output(self, stream: str = "stdout") -> bytes:
        return b"".join(
            f.data for f in self.frames if f.kind is FrameKind.OUTPUT and f.meta["stream"] == stream
        )

    def seqs(self) -> list[int]:
        return [f.meta["seq"] for f in self.frames if f.kind is FrameKind.OUTPUT]

    async def result(self, timeout: float = 10.0) -> protocol.ExecResult:
        await asyncio.wait_for(self.ended.wait(), timeout)
        assert self.frames[-1].kind is FrameKind.EXIT
        return protocol.result_from_meta(self.frames[-1].meta)


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[executing.Executor]:
    instance = executing.Executor(tmp_path / "work")
    yield instance
    instance.close()


async def test_argv_env_cwd_stdin_and_exit_code(
    executor: executing.Executor, tmp_path: Path
) -> None:
    stream = Stream()
    cwd = tmp_path / "work" / "app"  # inside the work root; created for the step
    request = ExecRequest(
        command_id="c1",
        argv=["sh", "-c", 'pwd; echo "$GREETING"; cat; echo problem >&2; exit 4'],
        env={"GREETING": "hello"},
        cwd=str(cwd),
        stdin=b"piped\n",
    )
    executor.submit(request, stream)
    result = await stream.result()
    assert result.exit_code == 4 and result.signal is None and result.error is None
    assert stream.output() == f"{cwd}\nhello\npiped\n".encode()
    assert stream.output("stderr") == b"problem\n"
    assert stream.seqs() == list(range(len(stream.seqs())))


async def test_script_runs_in_work_dir_by_default(executor: executing.Executor) -> None:
    stream = Stream()
    executor.submit(ExecRequest(command_id="c", script="pwd"), stream)
    assert (await stream.result()).ok
    assert stream.output() == f"{executor.work_dir}\n".encode()


async def test_timeout_kills_the_whole_process_group(
    executor: executing.Executor, tmp_path: Path
) -> None:
    stream = Stream()
    pid_file = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    executor.submit(ExecRequest(command_id="t", script=script, timeout=0.3), stream)
    result = await stream.result()
    assert result.timed_out and not result.cancelled and result.signal == 15
    child = int(pid_file.read_text())
    await asyncio.sleep(0.1)
    # Gone, or a zombie nobody reaps (PID 1 in a container may not).
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in {"gone", "Z"}


async def test_cancel_and_cancel_before_start(executor: executing.Executor) -> None:
    stream = Stream()
    executor.submit(ExecRequest(command_id="k", argv=["sleep", "30"]), stream)
    await asyncio.sleep(0.1)
    assert executor.cancel("k")
    result = await stream.result()
    assert result.cancelled and result.signal == 15 and result.error is None

    stream = Stream()
    assert (
        executor.submit(ExecRequest(command_id="never", argv=["true"]), stream, cancel=True) is None
    )
    result = await stream.result()
    assert result.cancelled and result.exit_code is None


async def test_repeated_id_returns_stored_result_even_after_restart(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    request = ExecRequest(command_id="once", script=f"echo run >> {marker}; exit 3")
    first = Stream()
    before = executing.Executor(tmp_path / "work")
    before.submit(request, first)
    expected = await first.result()
    before.close()
    # A new executor on the same work dir stands for a restarted agent.
    again = Stream()
    after = executing.Executor(tmp_path / "work")
    assert after.submit(request, again) is None
    assert await again.result() == expected
    after.close()
    assert marker.read_text() == "run\n"


async def test_started_but_unfinished_command_is_never_rerun(tmp_path: Path) -> None:
    store = executing.ResultStore(tmp_path / "work" / "results")
    store.mark_started("lost")
    store.close()
    stream = Stream()
    executor = executing.Executor(tmp_path / "work")
    executor.submit(ExecRequest(command_id="lost", argv=["true"]), stream)
    result = await stream.result()
    executor.close()
    assert result.exit_code is None and "interrupted" in (result.error or "")


async def test_attach_only_for_an_unknown_id_does_not_run(executor: executing.Executor) -> None:
    stream = Stream()
    executor.submit(ExecRequest(command_id="ghost", argv=["true"]), stream, attach_only=True)
    result = await stream.result()
    assert result.exit_code is None and "unknown command" in (result.error or "")
    assert not executor.store.was_started("ghost")


async def test_output_stops_at_the_window_and_resumes_on_ack(executor: executing.Executor) -> None:
    """Flow control: unacknowledged output is bounded; the process waits, nothing is lost."""
    stream = Stream()
    request = ExecRequest(command_id="flood", argv=["seq", "1", "200000"])
    execution = executor.submit(request, stream)
    assert execution is not None
    execution._window = 64 * 1024  # small window so the test is quick
    await asyncio.sleep(0.5)
    sent = sum(len(f.data) for f in stream.frames)
    assert not execution.done
    assert sent <= 64 * 1024 + protocol.MAX_CHUNK + 1024
    while not stream.ended.is_set():
        if stream.seqs():
            executor.acknowledge("flood", stream.seqs()[-1], False)
        await asyncio.sleep(0.01)
    result = await stream.result()
    assert result.ok
    assert stream.output() == "".join(f"{i}\n" for i in range(1, 200001)).encode()


async def test_reattach_replays_unacknowledged_output_then_the_result(
    executor: executing.Executor,
) -> None:
    first = Stream()
    execution = executor.submit(
        ExecRequest(command_id="r", script="echo one; sleep 0.3; echo two"), first
    )
    assert execution is not None
    while not first.seqs():
        await asyncio.sleep(0.01)
    executor.detach_all()  # the connection drops
    await execution.wait()
    assert len(first.seqs()) == 1 and not first.ended.is_set()

    second = Stream()
    executor.submit(
        ExecRequest(command_id="r", argv=["false"]), second, resume_seq=1, attach_only=True
    )
    result = await second.result()
    assert result.ok
    assert second.seqs() == [1] and second.output() == b"two\n"
    executor.acknowledge("r", 1, exit_received=True)
    assert executor.undelivered() == []


async def test_missing_program_and_bad_cwd_are_errors_not_crashes(
    executor: executing.Executor,
) -> None:
    stream = Stream()
    executor.submit(ExecRequest(command_id="m", argv=["/no/such/program"]), stream)
    result = await stream.result()
    assert result.exit_code is None and "cannot start" in (result.error or "")
    blocker = executor.work_dir / "a-file"
    blocker.write_text("not a directory")
    stream = Stream()
    executor.submit(ExecRequest(command_id="d", argv=["true"], cwd=str(blocker)), stream)
    assert "cannot start" in ((await stream.result()).error or "")


async def test_shutdown_waits_then_cancels_and_refuses_new_commands(
    executor: executing.Executor,
) -> None:
    quick, slow = Stream(), Stream()
    executor.submit(ExecRequest(command_id="quick", script="sleep 0.2; echo done"), quick)
    executor.submit(ExecRequest(command_id="slow", argv=["sleep", "30"]), slow)
    await executor.shutdown(grace=0.6)
    assert (await quick.result()).ok
    slow_result = await slow.result()
    assert slow_result.cancelled and slow_result.error == "agent shutting down"
    late = Stream()
    executor.submit(ExecRequest(command_id="late", argv=["true"]), late)
    assert (await late.result()).error == "agent is shutting down"


def test_journal_survives_a_torn_line_and_forgets_old_records(tmp_path: Path) -> None:
    store = executing.ResultStore(tmp_path)
    store.mark_started("a")
    store.save(protocol.ExecResult("b", 0, duration=1.0))
    store.close()
    with (tmp_path / executing.JOURNAL).open("a") as journal:
        journal.write('{"t": 1, "id": "tor')  # crash mid-write
    reopened = executing.ResultStore(tmp_path)
    assert reopened.was_started("a") and reopened.load("a") is None
    assert reopened.load("b") == protocol.ExecResult("b", 0, duration=1.0)
    reopened.close()
    expired = executing.ResultStore(tmp_path, retention=-1.0)
    assert not expired.was_started("a") and expired.load("b") is None
    expired.close()
