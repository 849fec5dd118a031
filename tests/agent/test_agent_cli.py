"""The ``agent`` command's option parsing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from agent import cli


def test_server_and_labels_are_parsed() -> None:
    assert cli.parse_server("hub.example:4433") == ("hub.example", 4433)
    assert cli.parse_server("[::1]:4433") == ("::1", 4433)
    assert cli.parse_labels("role=web, zone=a,") == {"role": "web", "zone": "a"}
    for bad in ("hub", "hub:0", ":4433", "hub:x"):
        with pytest.raises(ValueError):
            cli.parse_server(bad)
    with pytest.raises(ValueError):
        cli.parse_labels("role")


def test_a_token_is_required_and_ca_excludes_pin(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli.agent, ["--server", "h:1", "--pin-sha256", "AB"], env={"QUICFLOW_AGENT_TOKEN": ""}
    )
    assert result.exit_code == 2 and "token is required" in result.output
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    result = runner.invoke(
        cli.agent, ["--server", "h:1", "--token", "t", "--ca", str(ca), "--pin-sha256", "AB"]
    )
    assert result.exit_code == 2 and "not both" in result.output


def test_servers_take_one_pin_for_all_or_one_each_in_order() -> None:
    hub = cli.client.HubAddress
    assert cli._hubs(("a:1", "[::1]:2"), ("AA",)) == [hub("a", 1, "AA"), hub("::1", 2, "AA")]
    assert cli._hubs(("a:1", "b:2"), ("AA", "BB")) == [hub("a", 1, "AA"), hub("b", 2, "BB")]
    assert cli._hubs(("a:1", "b:2"), ()) == [hub("a", 1), hub("b", 2)]
    assert str(hub("::1", 2)) == "[::1]:2" and str(hub("a", 1)) == "a:1"
    runner = CliRunner()
    servers = ["--server", "a:1", "--server", "b:2", "--server", "c:3"]
    result = runner.invoke(
        cli.agent, [*servers, "--pin-sha256", "AA", "--pin-sha256", "BB", "--token", "t"]
    )
    assert result.exit_code == 2 and "2 pins for 3 hubs" in result.output
    result = runner.invoke(cli.agent, ["--server", "a:1", "--server", "a:1", "--token", "t"])
    assert result.exit_code == 2 and "the same hub is given twice" in result.output
    # The environment takes several, separated by spaces, as a unit's Environment= would.
    result = runner.invoke(
        cli.agent,
        ["--print-systemd-unit", "--name", "web-1"],
        env={"QUICFLOW_SERVER": "a:1 b:2", "QUICFLOW_HUB_PIN": "AA BB"},
    )
    assert result.exit_code == 0, result.output
    assert "--server a:1 --server b:2 --pin-sha256 AA --pin-sha256 BB" in result.output


def imported_modules(*argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``python -X importtime ARGV`` imported, and how it ran."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=60
    )
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, done


def test_quicflow_agent_runs_the_agent_without_loading_the_reconciler() -> None:
    # ``python -m reconciler`` is what the ``quicflow`` executable runs (the launcher).
    names, done = imported_modules("-m", "reconciler", "agent", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage: quicflow agent [OPTIONS]" in done.stdout
    assert "agent.client" in names
    assert {n for n in names if n.startswith("reconciler")} == {"reconciler", "reconciler.launcher"}
    # Nor the server side's libraries, nor the installed-metadata lookup.
    for heavy in ("pygit2", "starlette", "docker", "kubernetes", "importlib.metadata"):
        assert heavy not in names, heavy
    # Every other command still goes to the full command line.
    names, done = imported_modules("-m", "reconciler", "validate", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reconciler.cli" in names and "validate" in done.stdout
