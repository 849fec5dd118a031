"""One engine per data dir: a second ``serve`` or ``apply`` refuses to start, clearly.

The lock itself (``store.locking``), then the real thing: ``quicflow serve
--local-agent`` running as a process, a second ``apply`` and a second ``serve`` on its
data dir (each must exit non-zero naming the data dir and the server's pid, before
touching the local agent's token), the commands that only read or record still working
beside it, and the first server still deploying through its local agent afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo

from reconciler.store import locking


def test_a_second_holder_is_refused_with_the_data_dir_and_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with locking.DataDirLock(data, "serve"):
        assert (data / locking.LOCK_FILE).read_text().startswith(f"pid {os.getpid()}, ")
        with pytest.raises(locking.DataDirInUse) as refused:
            locking.DataDirLock(data, "apply").acquire()
        message = str(refused.value)
        assert str(data.resolve()) in message
        assert f"pid {os.getpid()}, quicflow serve" in message
    # Released with its holder: the next one gets it.
    with locking.DataDirLock(data, "apply"):
        pass


def test_the_lock_dies_with_its_process_and_its_children_do_not_keep_it(tmp_path: Path) -> None:
    """A crashed engine leaves no stale lock, even when a process it started lives on."""
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from pathlib import Path\n"
            "from reconciler.store import locking\n"
            f"locking.DataDirLock(Path({str(data)!r}), 'apply').acquire()\n"
            # A deploy script that outlives the engine (a server it started).
            "child = subprocess.Popen(['sleep', '30'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(30)\n",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(locking.DataDirInUse, match=f"pid {holder.pid}, quicflow apply"):
            locking.DataDirLock(data, "serve").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with locking.DataDirLock(data, "serve"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        holder.stdout.close()


# -- the real processes ---------------------------------------------------------------

CONFIG = {
    "quicflow.yaml": """\
settings:
  poll_interval: 1s
users:
  - {username: alice, email: alice@example.com, is_admin: true}
""",
    "projects/app/project.yaml": """\
members:
  - {user: alice, role: owner}
deploy:
  type: script
  script: {run: 'echo "$QUICFLOW_VERSION" > "$RELEASED"'}
""",
}


def _env(version: str, released: Path) -> str:
    return (
        f'version: "{version}"\ntargets:\n  - {{local: web}}\n'
        f'variables:\n  RELEASED: "{released}"\n'
    )


def quicflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args]


CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait_for(condition, what: str, log: Path, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict]:
    """``quicflow serve --local-agent`` on DATA, after it released 1.0 through its agent."""
    repo = ConfigRepo(tmp_path / "config")
    released = tmp_path / "released"
    repo.commit({**CONFIG, "projects/app/environments/prod.yaml": _env("1.0", released)})
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            quicflow(
                "serve", "--repo", str(repo.path), "--data", str(data), "--local-agent",
                "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
            ),
            cwd=tmp_path, env=CHILD_ENV, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(
            lambda: released.exists() and released.read_text() == "1.0\n", "1.0 released", log
        )
        yield {"repo": repo, "data": data, "log": log, "process": process, "released": released}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.integration
def test_a_second_engine_on_the_data_dir_refuses_and_the_first_keeps_working(
    server: dict, tmp_path: Path
) -> None:
    repo: ConfigRepo = server["repo"]
    data: Path = server["data"]
    pid = server["process"].pid
    expected = re.escape(
        f"data dir {data.resolve()} is in use by another quicflow process (pid {pid}, quicflow serve"
    )

    for second in (
        quicflow("apply", "--repo", str(repo.path), "--data", str(data)),
        quicflow("apply", "--repo", str(repo.path), "--data", str(data), "--local-agent"),
        quicflow(
            "serve", "--repo", str(repo.path), "--data", str(data), "--local-agent",
            "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
        ),
    ):  # fmt: skip
        result = subprocess.run(
            second, cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0, result.stdout + result.stderr
        assert re.search(expected, result.stderr), result.stderr

    # What only reads or records works beside the server.
    for beside in (
        quicflow("history", "app", "prod", "--repo", str(repo.path)),
        quicflow("plan", "--repo", str(repo.path)),
        quicflow("token", "create", "alice", "--repo", str(repo.path), "--data", str(data)),
    ):
        result = subprocess.run(
            beside, cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (beside, result.stdout + result.stderr)

    # The first server is untouched: its local agent still runs its deploys.
    assert server["process"].poll() is None
    repo.commit({"projects/app/environments/prod.yaml": _env("2.0", server["released"])})
    _wait_for(lambda: server["released"].read_text() == "2.0\n", "2.0 released", server["log"])
    log = server["log"].read_text()
    assert "revoked" not in log and "disconnected" not in log, log
