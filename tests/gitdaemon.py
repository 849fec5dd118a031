"""Test helper: a config repo's remote served by a real ``git daemon``.

``git daemon`` (from Debian's ``git``) serves bare repositories over ``git://``; without
``--enable=receive-pack`` every push is refused, as a protected branch or a read-only
token refuses one on a real Git host. With it, pushes run the repository's hooks, so an
``update`` hook can decline some refs only (``refuse_quicflow_refs``), as a host that
protects ``refs/quicflow/*`` does. Repositories under ``base`` are served as
``git://127.0.0.1:PORT/NAME``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from gitrepos import git


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def read_only_daemon(base: Path) -> Iterator[str]:
    """Serve the bare repositories under ``base`` read-only; yields ``git://127.0.0.1:PORT``."""
    with _daemon(base, ()) as url:
        yield url


@contextlib.contextmanager
def pushable_daemon(base: Path) -> Iterator[str]:
    """Serve the bare repositories under ``base`` with pushes allowed (their hooks run, as
    on a Git host: an ``update`` hook can refuse a ref); yields ``git://127.0.0.1:PORT``."""
    with _daemon(base, ("--enable=receive-pack",)) as url:
        yield url


REFUSE_QUICFLOW_REFS = """\
#!/bin/sh
# A Git host that protects refs/quicflow/*: every update of them is declined.
case "$1" in
  refs/quicflow/*) echo "$1 is protected on this host" >&2; exit 1 ;;
esac
exit 0
"""


def refuse_quicflow_refs(bare: Path, refuse: bool = True) -> None:
    """Install (or remove) an ``update`` hook in ``bare`` that declines refs/quicflow/*."""
    hook = bare / "hooks" / "update"
    if not refuse:
        hook.unlink(missing_ok=True)
        return
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(REFUSE_QUICFLOW_REFS)
    hook.chmod(0o755)


@contextlib.contextmanager
def _daemon(base: Path, options: tuple[str, ...]) -> Iterator[str]:
    port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            *options,
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"git://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("git daemon did not start") from None
                time.sleep(0.02)
        yield url
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def bare_copy(source: Path, target: Path) -> Path:
    """A bare clone of ``source`` at ``target`` (what the daemon serves)."""
    git(source.parent, "clone", "-q", "--bare", str(source), str(target))
    return target
