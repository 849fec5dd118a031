"""The ``hub fingerprint``, ``agent-token`` and ``agents`` CLI commands.

They work in the hub dir inside the data dir (``DATA/hub``), where ``quicflow serve``'s
hub keeps its certificate and tokens; the end-to-end check with real processes is
``tests/hub/test_hub_documented_setup.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agent import protocol
from reconciler.hub import commands, locations, registry, snapshots, tls, tokens


def test_fingerprint_creates_and_prints_the_hub_fingerprint(tmp_path: Path) -> None:
    result = CliRunner().invoke(commands.hub, ["fingerprint", "--data", str(tmp_path)])
    assert result.exit_code == 0
    hub_dir = tmp_path / "hub"
    assert locations.hub_dir(tmp_path) == hub_dir
    assert result.output.strip() == tls.ensure_identity(hub_dir).fingerprint()
    assert not (tmp_path / tls.CERTIFICATE_FILE).exists()


def test_token_create_prints_only_the_token_and_revoke_removes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(commands.agent_token, ["create", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("qfa_")
    assert "web-1" in result.stderr
    hub_dir = tmp_path / "hub"
    assert tokens.TokenStore(hub_dir).verify("web-1", token)
    assert not (tmp_path / tokens.TOKENS_FILE).exists()

    result = runner.invoke(commands.agent_token, ["revoke", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 0 and not tokens.TokenStore(hub_dir).knows("web-1")
    result = runner.invoke(commands.agent_token, ["revoke", "web-1", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "has no token" in result.output


def test_bad_agent_name_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        commands.agent_token, ["create", "bad name", "--data", str(tmp_path)]
    )
    assert result.exit_code == 2 and "invalid agent name" in result.output


def test_agents_lists_connected_agents_from_the_snapshot_and_the_others_offline(
    tmp_path: Path, monkeypatch
) -> None:
    hub_dir = locations.hub_dir(tmp_path)
    store = tokens.TokenStore(hub_dir)
    store.create("web-1")
    store.create("web-2")
    now = 10_000.0
    monkeypatch.setattr(commands.time, "time", lambda: now)
    connected = registry.AgentInfo(
        "web-1", {"role": "web"}, "host-1", "Linux", "1.2.3", now - 60, now - 4,
        "10.0.0.5:4000", 15.0,
    )  # fmt: skip
    snapshots.write(
        hub_dir, snapshots.render([connected], written=now - 1, address="h:4433", interval=5.0)
    )
    result = CliRunner().invoke(commands.agents, ["--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "HEARTBEAT",
        "VERSION",
        "ADDRESS",
        "HOST",
        "PROCS",
        "CONTAINERS",
        "LABELS",
    ]
    assert lines[1].split() == [
        "web-1",
        "connected",
        "4s",
        "ago",
        "1.2.3",
        "10.0.0.5:4000",
        "host-1",
        "-",  # no status report yet
        "-",
        "role=web",
    ]
    assert lines[2].split() == ["web-2", "offline", "-", "-", "-", "-", "-", "-", "-"]

    # A hub that stopped updating the snapshot is not believed: every agent shows offline.
    now += 60
    result = CliRunner().invoke(commands.agents, ["--data", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0
    assert "is not answering: last update 61s ago" in result.stderr
    rows = json.loads(result.stdout)["agents"]
    assert [(r["name"], r["state"]) for r in rows] == [("web-1", "offline"), ("web-2", "offline")]


def test_files_an_earlier_release_left_in_the_data_dir_are_pointed_out(tmp_path: Path) -> None:
    tls.ensure_identity(tmp_path)  # where the old CLI put the certificate
    result = CliRunner().invoke(commands.hub, ["fingerprint", "--data", str(tmp_path)])
    assert result.exit_code == 0
    assert f"warning: {tmp_path / tls.CERTIFICATE_FILE} was written by an earlier" in result.stderr
    assert result.stdout.strip() == tls.ensure_identity(tmp_path / "hub").fingerprint()
    assert result.stdout.strip() != tls.ensure_identity(tmp_path).fingerprint()


def test_agents_detail_lists_each_agent_s_processes_and_containers(
    tmp_path: Path, monkeypatch
) -> None:
    hub_dir = locations.hub_dir(tmp_path)
    tokens.TokenStore(hub_dir).create("web-1")
    now = 10_000.0
    monkeypatch.setattr(commands.time, "time", lambda: now)
    report = protocol.StatusReport(
        now - 2,
        (protocol.ProcessStatus("nginx", 4321, "sleeping", 1.25, 12_900_000, started=0.0),),
        (
            protocol.ContainerStatus(
                "shop-prod", "r/shop:1", None, "running", "healthy",
                {"quicflow.project": "shop", "quicflow.env": "prod", "quicflow.version": "1.0"},
                id="0123456789ab", started=3600.0, cpu_percent=3.0, memory_bytes=2048,
            ),
        ),
        ("docker: slow",),
        containers_omitted=4,
    )  # fmt: skip
    connected = registry.AgentInfo(
        "web-1", {"role": "web"}, "host-1", "Linux", "1.2.3", now - 60, now - 4,
        "10.0.0.5:4000", 15.0, report,
    )  # fmt: skip
    snapshots.write(
        hub_dir, snapshots.render([connected], written=now - 1, address="h:4433", interval=5.0)
    )
    plain = CliRunner().invoke(commands.agents, ["--data", str(tmp_path)])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.splitlines()[1].split()[-3:] == ["1", "5", "role=web"]
    assert "nginx" not in plain.stdout  # counts only, without --detail

    result = CliRunner().invoke(commands.agents, ["--data", str(tmp_path), "--detail"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index("web-1: 1 process, 5 containers")
    assert lines[at + 1].split() == [
        "KIND", "NAME", "PID/ID", "STATE", "HEALTH", "CPU", "MEMORY", "VERSION", "STARTED",
    ]  # fmt: skip
    assert lines[at + 2].split() == [
        "process", "nginx", "4321", "sleeping", "-", "1.2%", "12.3", "MiB", "-",
        "1970-01-01T00:00:00Z",
    ]  # fmt: skip
    assert lines[at + 3].split() == [
        "container", "shop-prod", "0123456789ab", "running", "healthy", "3.0%", "2.0", "KiB",
        "1.0", "1970-01-01T01:00:00Z",
    ]  # fmt: skip
    assert lines[at + 4 :] == ["  (4 more containers not listed)", "  note: docker: slow"]

    as_json = CliRunner().invoke(commands.agents, ["--data", str(tmp_path), "--format", "json"])
    (row,) = json.loads(as_json.stdout)["agents"]
    assert row["processes"][0]["pid"] == 4321 and row["containers"][0]["id"] == "0123456789ab"
    assert row["containers_omitted"] == 4


def test_a_token_issued_on_one_replica_is_registered_on_another(tmp_path: Path) -> None:
    runner = CliRunner()
    first, second = tmp_path / "a", tmp_path / "b"
    issued = runner.invoke(commands.agent_token, ["create", "web-1", "--data", str(first)])
    token_file = tmp_path / "web-1.token"
    token_file.write_text(issued.stdout)
    result = runner.invoke(
        commands.agent_token,
        ["create", "web-1", "--token-file", str(token_file), "--data", str(second)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing new to capture: the token stays in its file
    assert tokens.TokenStore(locations.hub_dir(second)).verify("web-1", issued.stdout.strip())
    # From stdin too, e.g. piped over ssh to the replica.
    third = tmp_path / "c"
    result = runner.invoke(
        commands.agent_token,
        ["create", "web-1", "--token-file", "-", "--data", str(third)],
        input=issued.stdout,
    )
    assert result.exit_code == 0 and "from stdin" in result.stderr
    assert tokens.TokenStore(locations.hub_dir(third)).verify("web-1", issued.stdout.strip())

    weak = tmp_path / "weak"
    weak.write_text("secret\n")
    for path, why in ((weak, "not an agent token"), (tmp_path / "nope", "No such file")):
        result = runner.invoke(
            commands.agent_token,
            ["create", "web-1", "--token-file", str(path), "--data", str(second)],
        )
        assert result.exit_code == 2 and f"--token-file: {path}: {why}" in result.output
        assert "secret" not in result.output

    # Revoking is per replica, and says so.
    result = runner.invoke(commands.agent_token, ["revoke", "web-1", "--data", str(second)])
    assert result.exit_code == 0 and "revoke it on every replica" in result.stderr
    assert tokens.TokenStore(locations.hub_dir(first)).knows("web-1")
