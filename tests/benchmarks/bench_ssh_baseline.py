"""Baseline for the QUIC fan-out: OpenSSH running ``true`` in 200 sessions on loopback.

Run as a plain script (pytest does not collect it: no ``test_`` names)::

    python tests/benchmarks/bench_ssh_baseline.py [--hosts 200] [--forks 50] [--rounds 3]

``bench_quic_fanout.py`` imports this module and prints these figures beside the QUIC
ones in the same run; run this file alone for the SSH side only.

The benchmark starts its own ``sshd`` (Debian's openssh-server: ``apt-get install -y
openssh-server openssh-client``) on a free high loopback port, with a host key, an
``sshd_config``, ``authorized_keys`` and a fresh ed25519 client key all in a temporary
directory: public-key authentication only, ``UsePAM no``, ``StrictModes no``,
``MaxStartups``/``MaxSessions`` large enough for the load. It logs in as a clean
``/bin/sh`` user: run as root, it creates a throwaway system user (``qf-ssh-bench``,
no home, shell ``/bin/sh``) and deletes it afterwards — root's own login shell here is
bash, which sshd makes source ``~/.bashrc``, and this machine's (``pyenv init``) costs
~200 ms per session, which would measure the dotfiles rather than SSH
(``--ssh-user NAME`` logs in as an existing user instead; not root, it logs in as the
current user). The client uses its own ``ssh_config`` (``-F``) and a
``known_hosts`` holding the server's key, with strict host key checking, as a careful
deployment tool would. It measures, for ``--hosts`` sessions each running ``true``:

a. fresh connections, ``--forks`` at a time (like Ansible's forks): a full SSH
   handshake, key exchange and authentication per session;
b. reused connections: ``--hosts`` ControlMaster connections are opened first (one per
   "host", each with its own ``ControlPath`` in the temporary directory; not timed),
   then ``true`` runs through them, ``--forks`` at a time — the fastest way OpenSSH can
   run a command on many hosts it is already connected to.

Every process it starts (sshd, its per-connection children, the masters) is ended by
pid when it finishes, also on failure. If sshd is missing or cannot start, ``run``
raises ``SshUnavailable`` with the reason (``bench_quic_fanout.py`` prints it and goes
on with the QUIC figures).

Reference (DESIGN.md, this 2-core machine): ~17 s fresh and ~1.3 s reused for 200 hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
BENCH_USER = "qf-ssh-bench"
COMMAND_TIMEOUT = 60.0  # seconds for one ssh invocation, so a stuck session cannot hang the run
STARTUP_TIMEOUT = 10.0


class SshUnavailable(RuntimeError):
    """sshd or ssh is missing or could not start; the message says why."""


@dataclass
class SshFigures:
    """Seconds for ``hosts`` sessions of ``true``, fresh and through reused masters."""

    hosts: int
    forks: int
    fresh: list[float] = field(default_factory=list)
    reused: list[float] = field(default_factory=list)
    masters_open: float = 0.0
    user: str = ""
    shell: str = ""
    version: str = ""

    @property
    def fresh_median(self) -> float:
        return statistics.median(self.fresh)

    @property
    def reused_median(self) -> float:
        return statistics.median(self.reused)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                if int(line.split()[1]) == pid:
                    found.append(int(entry.name))
                break
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """Run ``argv``; return its exit code and stderr (killed after ``timeout``)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill(process.pid)
        await process.wait()
        return -1, f"timed out after {timeout:.0f} s: {' '.join(argv)}"
    except asyncio.CancelledError:  # the run is being interrupted: leave nothing behind
        _kill(process.pid)
        raise
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace").strip()


class SshServer:
    """A private sshd on loopback with its own keys and config in ``base``."""

    def __init__(self, base: Path, max_sessions: int, user: str | None = None):
        self.base = base
        self.max_sessions = max_sessions
        self.port = _free_port()
        self.user = user or ""
        self.shell = ""
        self.created_user = False
        self.process: asyncio.subprocess.Process | None = None
        self.client_config = base / "ssh_config"
        self.version = ""

    async def start(self) -> None:
        """Make the keys and configs, start sshd and wait until a login works."""
        for tool in ("ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise SshUnavailable(f"{tool} is not installed (apt-get install openssh-client)")
        if not os.access(SSHD, os.X_OK):
            raise SshUnavailable(f"{SSHD} is not installed (apt-get install openssh-server)")
        if os.geteuid() == 0:
            # Debian's sshd refuses to start without its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        await self._choose_user()
        base = self.base
        for name in ("host_key", "client_key"):
            code, error = await _run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(base / name)]
            )
            if code:
                raise SshUnavailable(f"ssh-keygen failed: {error}")
        (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
        # sshd reads authorized_keys as the user who logs in.
        base.chmod(0o755)
        (base / "authorized_keys").chmod(0o644)
        host_key = (base / "host_key.pub").read_text().split()
        (base / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")
        (base / "sshd_config").write_text(
            f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {base / "host_key"}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
AllowUsers {self.user}
MaxStartups {self.max_sessions * 2}
MaxSessions {self.max_sessions}
MaxAuthTries 3
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
LogLevel ERROR
"""
        )
        self.client_config.write_text(
            f"""\
Host bench
  HostName 127.0.0.1
  Port {self.port}
  User {self.user}
  IdentityFile {base / "client_key"}
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {base / "known_hosts"}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
"""
        )
        code, error = await _run([SSHD, "-t", "-f", str(base / "sshd_config")])
        if code:
            raise SshUnavailable(f"sshd rejected its config: {error}")
        _, version = await _run(["ssh", "-V"])
        self.version = version
        with open(base / "sshd.log", "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                SSHD,
                "-D",
                "-e",
                "-f",
                str(base / "sshd_config"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        error = ""
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                break
            code, error = await _run(self.ssh("true"), timeout=STARTUP_TIMEOUT)
            if code == 0:
                return
            await asyncio.sleep(0.1)
        log = (base / "sshd.log").read_text(errors="replace").strip()
        raise SshUnavailable(f"sshd did not accept a login: {error or log or 'no output'}")

    async def _choose_user(self) -> None:
        """Use the named user, else a throwaway /bin/sh user (as root), else ourselves."""
        if not self.user:
            if os.geteuid() != 0:
                self.user = getpass.getuser()
            else:
                self.user = BENCH_USER
                try:
                    pwd.getpwnam(BENCH_USER)  # left by a run that was killed: reuse it
                except KeyError:
                    # Password field "*": no password login, yet not "locked" ("!"), which
                    # sshd without PAM would refuse even for a key.
                    code, error = await _run(
                        ["useradd", "--system", "--no-create-home", "--home-dir", "/",
                         "--shell", "/bin/sh", "--password", "*", BENCH_USER]
                    )  # fmt: skip
                    if code:
                        raise SshUnavailable(f"useradd {BENCH_USER} failed: {error}") from None
                self.created_user = True  # ours by name: deleted when the run ends
        try:
            self.shell = pwd.getpwnam(self.user).pw_shell
        except KeyError:
            raise SshUnavailable(f"no such user {self.user!r}") from None

    async def remove_user(self) -> None:
        """Delete the throwaway user if this run created it."""
        if self.created_user:
            code, error = await _run(["userdel", self.user])
            if code:
                print(f"warning: userdel {self.user} failed: {error}", file=sys.stderr)
            self.created_user = False

    def ssh(self, *command: str, options: tuple[str, ...] = ()) -> list[str]:
        """The ssh command line that runs ``command`` on the benchmark host."""
        return ["ssh", "-F", str(self.client_config), *options, "bench", *command]

    async def stop(self) -> None:
        """End sshd and every per-connection sshd it forked."""
        if self.process is None or self.process.returncode is not None:
            return
        # Sessions end once their clients are gone: give them a moment, then end the rest.
        deadline = time.monotonic() + 3.0
        children = _children(self.process.pid)
        while children and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            children = _children(self.process.pid)
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            _kill(self.process.pid)
            await self.process.wait()
        for pid in children:
            _kill(pid)


@contextlib.asynccontextmanager
async def ssh_server(max_sessions: int, user: str | None = None) -> AsyncIterator[SshServer]:
    """A started ``SshServer`` in a temporary directory, stopped and removed afterwards."""
    # A short path: ControlPath sockets must fit in a unix socket address (108 bytes).
    with tempfile.TemporaryDirectory(prefix="qf-ssh-", dir="/tmp") as temporary:
        server = SshServer(Path(temporary), max_sessions, user)
        try:
            await server.start()
            yield server
        finally:
            await server.stop()
            await server.remove_user()


async def _fan_out(commands: list[list[str]], forks: int) -> float:
    """Run every command, ``forks`` at a time; seconds until the last one ended."""
    slots = asyncio.Semaphore(forks)

    async def one(argv: list[str]) -> tuple[int, str]:
        async with slots:
            return await _run(argv)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(argv) for argv in commands))
    seconds = time.perf_counter() - started
    failed = [error for code, error in results if code]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(commands)} ssh sessions failed: {failed[0]}")
    return seconds


class Masters:
    """``count`` ControlMaster connections, each a foreground ``ssh -M -N`` we hold by pid."""

    def __init__(self, server: SshServer, count: int):
        self.server = server
        self.paths = [server.base / "cm" / str(index) for index in range(count)]
        self.processes: list[asyncio.subprocess.Process] = []

    def options(self, index: int) -> tuple[str, ...]:
        return ("-o", "ControlMaster=no", "-o", f"ControlPath={self.paths[index]}")

    async def open(self, forks: int) -> float:
        """Open every master, ``forks`` at a time; seconds it took."""
        (self.server.base / "cm").mkdir()
        slots = asyncio.Semaphore(forks)

        async def one(path: Path) -> None:
            async with slots:
                process = await asyncio.create_subprocess_exec(
                    *self.server.ssh(
                        options=(
                            "-M",
                            "-N",
                            "-o",
                            f"ControlPath={path}",
                            "-o",
                            "ControlPersist=no",
                        )
                    ),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                self.processes.append(process)
                deadline = time.monotonic() + COMMAND_TIMEOUT
                while not path.exists():
                    if process.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"ControlMaster {path.name} did not start")
                    await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(*(one(path) for path in self.paths))
        return time.perf_counter() - started

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                _kill(process.pid)
                await process.wait()


async def run(
    hosts: int = 200,
    forks: int = 50,
    rounds: int = 3,
    fresh_rounds: int = 1,
    user: str | None = None,
) -> SshFigures:
    """Measure fresh and reused SSH fan-out of ``true`` to ``hosts`` sessions."""
    figures = SshFigures(hosts, forks)
    async with ssh_server(max(hosts, forks) + 10, user) as server:
        figures.user, figures.shell, figures.version = server.user, server.shell, server.version
        command = server.ssh("true", options=("-o", "ControlMaster=no", "-o", "ControlPath=none"))
        for _ in range(fresh_rounds):
            figures.fresh.append(await _fan_out([command] * hosts, forks))
        masters = Masters(server, hosts)
        try:
            figures.masters_open = await masters.open(forks)
            through = [server.ssh("true", options=masters.options(i)) for i in range(hosts)]
            for _ in range(rounds):
                figures.reused.append(await _fan_out(through, forks))
        finally:
            await masters.close()
    return figures


def describe(figures: SshFigures) -> list[str]:
    """The SSH figures as printable lines."""
    rounds = ", ".join(f"{seconds:.2f}" for seconds in figures.reused)
    return [
        f"OpenSSH ({figures.version}), sshd on loopback, user {figures.user} "
        f"(shell {figures.shell}), {figures.forks} at a time:",
        f"  (a) fresh connections, {figures.hosts} sessions of `true`: "
        + ", ".join(f"{seconds:.2f}" for seconds in figures.fresh)
        + f" s; median {figures.fresh_median:.2f} s",
        f"  (b) reused ControlMaster connections ({figures.hosts} masters opened in "
        f"{figures.masters_open:.2f} s, not counted): {rounds} s; "
        f"median {figures.reused_median:.2f} s",
    ]


def main() -> None:
    """Run the SSH baseline alone and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="rounds through reused masters")
    parser.add_argument("--fresh-rounds", type=int, default=1, help="rounds of fresh connections")
    parser.add_argument("--ssh-user", help="log in as this existing user (default: see above)")
    arguments = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C (asyncio.run cancels the task), so sshd is still ended.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        figures = asyncio.run(
            run(
                arguments.hosts,
                arguments.forks,
                arguments.rounds,
                arguments.fresh_rounds,
                arguments.ssh_user,
            )
        )
    except SshUnavailable as unavailable:
        print(f"OpenSSH baseline skipped: {unavailable}")
        sys.exit(1)
    print("\n".join(describe(figures)))


if __name__ == "__main__":
    main()
