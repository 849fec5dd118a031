"""The ``hub fingerprint`` and ``agent-token`` CLI commands."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reconciler.hub import commands, tls, tokens


def test_fingerprint_creates_and_prints_the_hub_fingerprint(tmp_path: Path) -> None:
    result = CliRunner().invoke(commands.hub, ["fingerprint", "--data", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.strip() == tls.ensure_identity(tmp_path).fingerprint()


def test_token_create_prints_only_the_token_and_revoke_removes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(commands.agent_token, ["create", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("qfa_")
    assert "web-1" in result.stderr
    assert tokens.TokenStore(tmp_path).verify("web-1", token)

    result = runner.invoke(commands.agent_token, ["revoke", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 0 and not tokens.TokenStore(tmp_path).knows("web-1")
    result = runner.invoke(commands.agent_token, ["revoke", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "has no token" in result.output


def test_bad_agent_name_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        commands.agent_token, ["create", "bad name", "--data", str(tmp_path)]
    )
    assert result.exit_code == 2 and "invalid agent name" in result.output
