"""The leader of one local step's process group: runs its command, records how it ended.

``processes.spawn`` starts it in a session of its own as
``python -I -S supervisor.py DIR_FD LOCK_FD DEADLINE SHELL SCRIPT``, with stdout and
stderr already open on the journal entry's output files and the entry's lock held on
``LOCK_FD``. It writes ``pid`` (its pid, which is the group id, and its start time)
into the entry before the command starts, runs ``SHELL -c SCRIPT`` as its child, and
writes ``ending`` when the child ends: ``exit CODE AT`` (a negative CODE: killed by that
signal). Past DEADLINE (a ``processes.clock`` reading; ``-`` for none) it records a
timeout and kills its whole group, itself included -- so a step stays bounded while no
reconciler is there to time it out. ``ending`` is linked into place, never overwritten:
a reconciler that records a timeout or a cancel first wins.

It keeps the lock until it exits, which is how a restarted reconciler tells that it
still runs without trusting a PID. It does not stop for SIGTERM, SIGINT or SIGHUP before
its child does, so a signal sent to the whole group is recorded as how the command ended.

It starts for every local step, so it imports nothing but these few built-in modules
(no ``reconciler``, no json: about 10 ms) and finds its entry only through ``DIR_FD``.
"""

from __future__ import annotations

import os
import signal
import sys
import time

CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)  # the same as processes.clock


def main(argv: list[str]) -> int:
    directory, lock = int(argv[1]), int(argv[2])
    deadline = None if argv[3] == "-" else float(argv[3])
    shell, script = argv[4], argv[5]
    # Inherited on purpose; the command must not inherit them (the lock would outlive us).
    os.set_inheritable(directory, False)
    os.set_inheritable(lock, False)
    _write(directory, "pid", f"{os.getpid()} {_start_time()}\n")
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, _carry_on)  # a handler, not SIG_IGN: the child gets the default
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        child = _start(shell, script)
    except OSError as failure:
        _end(directory, f"error - {_now()} cannot start {shell}: {failure.strerror or failure}")
        return 127
    status = _wait(child, deadline)
    if status is None:
        _end(directory, f"timeout - {_now()}")
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the command's whole group, and us
        return 137
    _end(directory, f"exit {os.waitstatus_to_exitcode(status)} {_now()}")
    return 0


def _start(shell: str, script: str) -> int:
    """Fork and exec ``shell -c script`` with the signal state a shell started by the
    reconciler always had; raise ``OSError`` if it cannot be executed."""
    # posix_spawn would leave glibc's internal signals ignored in the child: fork, exec.
    failed, report = os.pipe()  # both close on exec: an empty read means it started
    child = os.fork()
    if child == 0:
        try:
            os.close(failed)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            for number in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these two
                signal.signal(number, signal.SIG_DFL)
            os.execvp(shell, [shell, "-c", script])
        except OSError as failure:
            os.write(report, f"{failure.errno}".encode())
        finally:
            os._exit(127)
    os.close(report)
    try:
        errno = os.read(failed, 64)
    finally:
        os.close(failed)
    if errno:
        os.waitpid(child, 0)
        number = int(errno)
        raise OSError(number, os.strerror(number))
    return child


def _wait(child: int, deadline: float | None) -> int | None:
    """The child's wait status, or None once ``deadline`` passed first."""
    while True:
        pid, status = os.waitpid(child, 0 if deadline is None else os.WNOHANG)
        if pid:
            return status
        assert deadline is not None
        left = deadline - _now()
        if left <= 0:
            return None
        signal.sigtimedwait({signal.SIGCHLD}, left)


def _carry_on(_number: int, _frame: object) -> None:
    """Keep waiting: the child decides how the command ends."""


def _now() -> float:
    return time.clock_gettime(CLOCK)


def _start_time() -> int:
    """This process's start time in clock ticks after boot (0 where /proc is missing)."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            return int(stat.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _write(directory: int, name: str, text: str) -> None:
    temporary = f".{name}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=directory)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


def _end(directory: int, line: str) -> None:
    temporary = f".ending.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=directory)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    try:
        os.link(temporary, "ending", src_dir_fd=directory, dst_dir_fd=directory)
    except FileExistsError:
        pass  # the reconciler recorded how it ended first (a timeout or a cancel)
    finally:
        os.unlink(temporary, dir_fd=directory)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
