"""The agent as a service: the systemd unit it prints, the example unit, and refusing root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from agent import cli, systemd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "systemd" / "quicflow-agent.service"
EXAMPLE_COMMAND = [
    "/usr/local/bin/quicflow", "agent", "--name", "web-1", "--server", "hub.example.com:4433",
    "--labels", "role=web", "--pin-sha256", "PASTE-THE-OUTPUT-OF-quicflow-hub-fingerprint",
    "--work-root", "/var/lib/quicflow-agent",
]  # fmt: skip


def directives(text: str) -> dict[str, list[str]]:
    """Key=value lines of a unit file (comments and section headers left out)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def print_unit(*args: str) -> str:
    result = CliRunner().invoke(
        cli.agent,
        ["--server", "hub.example.com:4433", "--print-systemd-unit", *args],
        env={"QUICFLOW_AGENT_TOKEN": ""},
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_the_example_unit_is_what_the_agent_prints_for_the_documented_host() -> None:
    assert EXAMPLE.read_text() == systemd.unit(EXAMPLE_COMMAND, name="web-1")


def test_printed_unit_runs_the_same_options_unprivileged_with_the_token_from_a_credential() -> None:
    unit = print_unit(
        "--name", "web-1", "--labels", "role=web,zone=a b", "--pin-sha256", "AB:CD",
        "--heartbeat", "5", "--allow-deploy-types", "container", "--watch", "nginx",
        "--token", "qfa_must-not-appear",
    )  # fmt: skip
    found = directives(unit)
    assert found["User"] == ["quicflow"] and found["Restart"] == ["always"]
    assert found["LoadCredential"] == ["agent-token:/etc/quicflow/agent-token"]
    (exec_start,) = found["ExecStart"]
    assert exec_start.split()[1:] == [
        "agent", "--name", "web-1", "--server", "hub.example.com:4433", "--labels",
        '"role=web,zone=a', 'b"', "--pin-sha256", "AB:CD", "--allow-deploy-types",
        "container", "--heartbeat", "5.0", "--watch", "nginx",
        "--work-root", "/var/lib/quicflow-agent", "--token-file", "%d/agent-token",
    ]  # fmt: skip
    assert "qfa_must-not-appear" not in unit
    # Confined: nothing but its state directory (the work root) is writable.
    assert found["ProtectSystem"] == ["strict"] and found["NoNewPrivileges"] == ["yes"]
    assert found["StateDirectory"] == ["quicflow-agent"]
    # SIGTERM goes to the agent alone, with time for running steps to finish.
    assert found["KillMode"] == ["mixed"] and found["TimeoutStopSec"] == ["45"]


def test_a_work_root_outside_the_state_directory_is_made_writable() -> None:
    unit = print_unit("--name", "db-1", "--work-root", "/srv/quicflow", "--shutdown-grace", "60")
    found = directives(unit)
    assert found["ReadWritePaths"] == ["/srv/quicflow"] and "StateDirectory" not in found
    assert found["TimeoutStopSec"] == ["75"]
    assert "--work-root /srv/quicflow --token-file %d/agent-token" in found["ExecStart"][0]


def test_specifiers_and_variables_in_arguments_are_escaped() -> None:
    assert systemd.quote("50%") == "50%%"
    assert systemd.quote("$HOME") == '"$$HOME"'
    assert systemd.quote('say "hi"') == '"say \\"hi\\""'
    text = systemd.unit(["quicflow", "agent", "--labels", "team=a%b"], name="x",
                        work_root=PurePosixPath("/var/lib/quicflow-agent"))  # fmt: skip
    assert "--labels team=a%%b --work-root" not in text  # the caller passes --work-root
    assert "--labels team=a%%b --token-file %d/agent-token" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_printed_unit(tmp_path: Path) -> None:
    unit = tmp_path / "quicflow-agent.service"
    unit.write_text(print_unit("--name", "web-1", "--labels", "role=web", "--pin-sha256", "AB"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # It reports problems on stderr (an unknown directive, a bad value) without failing.
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_agent_refuses_to_run_as_root_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    token = tmp_path / "token"
    token.write_text("qfa_x\n")
    result = CliRunner().invoke(
        cli.agent, ["--server", "h:1", "--pin-sha256", "AB", "--token-file", str(token)]
    )
    assert result.exit_code == 1 and "refusing to run as root" in result.output


def test_an_unreadable_token_file_and_unknown_deploy_types_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope"
    result = runner.invoke(
        cli.agent, ["--server", "h:1", "--pin-sha256", "AB", "--token-file", str(missing)]
    )
    assert result.exit_code == 2 and f"cannot read the token file {missing}" in result.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = runner.invoke(
        cli.agent, ["--server", "h:1", "--pin-sha256", "AB", "--token-file", str(empty)]
    )
    assert result.exit_code == 2 and "is empty" in result.output
    result = runner.invoke(
        cli.agent, ["--server", "h:1", "--token", "t", "--allow-deploy-types", "script,ssh"]
    )
    assert result.exit_code == 2 and "unknown deploy type ssh" in result.output


def test_a_unit_for_several_replicas_keeps_every_hub_and_says_to_register_the_token() -> None:
    unit = print_unit(
        "--name", "web-1", "--server", "b.example.com:4433",
        "--pin-sha256", "AA", "--pin-sha256", "BB",
    )  # fmt: skip
    (exec_start,) = directives(unit)["ExecStart"]
    assert exec_start.split()[4:12] == [
        "--server", "hub.example.com:4433", "--server", "b.example.com:4433",
        "--pin-sha256", "AA", "--pin-sha256", "BB",
    ]  # fmt: skip
    assert "It serves 2 hubs" in unit
    assert "quicflow agent-token create web-1 --token-file token-from-the-hub" in unit
    assert "hubs" not in print_unit("--name", "web-1", "--pin-sha256", "AA")
