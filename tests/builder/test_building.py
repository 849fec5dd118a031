"""Builds against the real Docker daemon and the htpasswd-protected local registry.

The application repo is a real Git repository made by the test; its image is built
FROM scratch with the static busybox. Skipped with the reason when tests/docker_env.sh
could not start Docker.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from dockerenv import Registry, commit_app
from gitrepos import ConfigRepo

from reconciler.builder import docker_cli
from reconciler.builder.building import Builder, BuildRequest
from reconciler.builds import BuildStatus
from reconciler.gitops import model

pytestmark = pytest.mark.integration


def _request(
    registry: Registry, repo: ConfigRepo, version: str, name: str | None = None, **build: object
) -> BuildRequest:
    name = name or f"quicflow-test/app-{secrets.token_hex(3)}"
    settings: dict = {
        "enabled": True,
        "target_image": f"{registry.address}/{name}:{{{{ version }}}}",
        "registry_credential": "registry",
        "args": {"VERSION": version},
        **build,
    }
    return BuildRequest(
        project="shop",
        version=version,
        build=model.BuildConfig(**settings),
        repo=model.Repo(str(repo.path)),
        actor="test",
        labels={"quicflow.test": "1"},
    )


def _log(builder: Builder, build_id: str) -> str:
    return "\n".join(line.line for line in builder.logs.read(build_id, limit=100000))


async def test_build_pushes_with_the_registry_digest_and_an_unchanged_rebuild_is_cached(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit = commit_app(app_repo, "1.0")
    request = _request(registry, app_repo, "1.0")
    record = await builder.build(request)
    assert record.status is BuildStatus.SUCCESS, record.error
    name = request.build.target_image.split("/", 1)[1].split(":")[0]  # type: ignore[union-attr]
    assert record.commit == commit and record.builder == "buildkit"
    assert record.image == f"{registry.address}/{name}:1.0"
    assert record.digest == registry.manifest_digest(name, "1.0")
    artifact = builder.store.artifact(record.id)
    assert artifact is not None and artifact.digest == record.digest and artifact.size > 0
    assert artifact.pinned == f"{registry.address}/{name}@{record.digest}"
    assert record.duration is not None and record.completed_at
    assert builder.logs.is_closed(record.id)
    assert registry.password not in _log(builder, record.id)

    again = await builder.build(request)
    assert again.status is BuildStatus.SUCCESS, again.error
    log = _log(builder, again.id)
    assert "CACHED" in log and f"cache from {record.image}" in log
    assert again.digest == record.digest  # same content, same layers, same manifest


async def test_a_failing_dockerfile_ends_failed_with_its_log(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0", tag=False)
    app_repo.commit(
        {
            "Dockerfile": 'FROM scratch\nARG VERSION\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", '
            '"-c", "echo step-output-4711; exit 3"]\n'
        },
        message="broken",
    )
    request = _request(registry, app_repo, "main")
    record = await builder.build(request)
    assert record.status is BuildStatus.FAILED
    assert "docker build failed" in record.error and "exit code: 3" in record.error
    assert "step-output-4711" in _log(builder, record.id)
    name = request.build.target_image.split("/", 1)[1].split(":")[0]  # type: ignore[union-attr]
    assert registry.manifest_digest(name, "main") is None  # nothing pushed


async def test_a_wrong_registry_password_fails_before_building_and_is_never_shown(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0")
    request = _request(registry, app_repo, "1.0", registry_credential="bad-registry")
    record = await builder.build(request)
    assert record.status is BuildStatus.FAILED
    assert f"registry login to {registry.address}" in record.error
    assert "unauthorized" in record.error.lower()
    log = _log(builder, record.id)
    assert "not-the-password-4711" not in log + record.error
    assert "docker build" not in log  # the login is checked before anything is built
    name = request.build.target_image.split("/", 1)[1].split(":")[0]  # type: ignore[union-attr]
    assert registry.manifest_digest(name, "1.0") is None


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        ({"dockerfile": "docker/Dockerfile.prod"}, "build.dockerfile 'docker/Dockerfile.prod'"),
        ({"args": {"VERSION": "1", "NOPE": "x"}}, "build.args NOPE: not declared by an ARG"),
        ({"target": "runtime"}, "build.target 'runtime': no stage of that name"),
        ({"context": "missing"}, "build.context 'missing': no such directory"),
    ],
)
async def test_bad_build_settings_fail_with_the_setting_named(
    builder: Builder, registry: Registry, app_repo: ConfigRepo, build: dict, expected: str
) -> None:
    commit_app(app_repo, "1.0")
    record = await builder.build(_request(registry, app_repo, "1.0", **build))
    assert record.status is BuildStatus.FAILED
    assert expected in record.error, record.error


async def test_an_unknown_version_fails_clearly(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0")
    record = await builder.build(_request(registry, app_repo, "9.9"))
    assert record.status is BuildStatus.FAILED
    assert "version '9.9' is neither a tag, a branch nor a commit" in record.error


async def test_an_unreachable_daemon_fails_clearly(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0")
    builder.docker = docker_cli.DockerCli(
        registry.docker, {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    record = await builder.build(_request(registry, app_repo, "1.0"))
    assert record.status is BuildStatus.FAILED
    assert record.error.startswith("Docker daemon unreachable at unix:///nonexistent.sock")


async def test_a_cli_without_buildkit_falls_back_to_the_classic_builder_with_a_warning(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    capabilities = await docker_cli.DockerCli(registry.docker).probe()
    assert capabilities.buildkit and not capabilities.warning
    plain = "/usr/local/bin/docker"
    try:
        builder.docker = docker_cli.DockerCli(plain)
        without = await builder.docker.probe()
    except docker_cli.DockerError as exc:
        pytest.skip(f"{plain} is not usable here: {exc}")
    if without.buildkit:
        pytest.skip(f"{plain} has buildx here: no client without BuildKit to test")
    assert "no buildx plugin" in without.warning
    commit_app(app_repo, "1.0")
    record = await builder.build(_request(registry, app_repo, "1.0"))
    assert record.status is BuildStatus.SUCCESS, record.error
    assert record.builder == "classic"
    assert "warning: docker CLI" in _log(builder, record.id)


async def test_a_running_build_can_be_cancelled(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0", tag=False)
    app_repo.commit(
        {
            "Dockerfile": "FROM scratch\nARG VERSION\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "sleep", "60"]\n'
        },
        message="slow",
    )
    record = builder.start(_request(registry, app_repo, "main"))
    for _ in range(200):
        if "sleep" in _log(builder, record.id):
            break
        await asyncio.sleep(0.05)
    assert await builder.cancel(record.id)
    final = await builder.wait(record.id)
    assert final.status is BuildStatus.CANCELLED and final.completed_at


async def test_builds_of_one_project_run_one_at_a_time(
    builder: Builder, registry: Registry, app_repo: ConfigRepo
) -> None:
    commit_app(app_repo, "1.0")
    request = _request(registry, app_repo, "1.0")
    first, second = builder.start(request), builder.start(request)
    done = [await builder.wait(first.id), await builder.wait(second.id)]
    assert [r.status for r in done] == [BuildStatus.SUCCESS] * 2
    assert "waiting for the project's previous build" in _log(builder, second.id)
