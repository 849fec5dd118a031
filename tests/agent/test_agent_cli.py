"""The ``agent`` command's option parsing."""

from __future__ import annotations

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
