"""The pure build checks: declared ARGs, stages, image templates, registry hosts."""

from __future__ import annotations

import pytest

from reconciler import builds
from reconciler.builder import docker_cli, dockerfiles
from reconciler.rules import images

DOCKERFILE = """\
# ARG COMMENTED
ARG BASE=scratch
FROM $BASE AS build
ARG VERSION \\
    COMMIT=none
FROM scratch AS runtime
"""


def test_declared_args_and_stages() -> None:
    assert dockerfiles.declared_args(DOCKERFILE) == {"BASE", "VERSION", "COMMIT"}
    assert dockerfiles.stages(DOCKERFILE) == ["build", "runtime"]
    assert dockerfiles.unknown_args(DOCKERFILE, ["VERSION", "HTTP_PROXY", "NOPE"]) == ["NOPE"]


def test_image_templates() -> None:
    values = {"version": "1.2", "commit": "a" * 40, "short_commit": "aaaaaaa"}
    assert (
        images.render_image("r:5000/x/{{ version }}-{{short_commit}}", values)
        == "r:5000/x/1.2-aaaaaaa"
    )
    with pytest.raises(ValueError, match="unknown placeholder"):
        images.render_image("r/x:{{ branch }}", values)
    assert images.tag_safe("feature/x+1") == "feature-x-1"


@pytest.mark.parametrize(
    ("image", "registry", "repository"),
    [
        ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000", "127.0.0.1:5000/a/b"),
        ("localhost/a@sha256:00", "localhost", "localhost/a"),
        ("nginx:1.25", "docker.io", "nginx"),
        ("ghcr.io/o/app", "ghcr.io", "ghcr.io/o/app"),
    ],
)
def test_registry_and_repository(image: str, registry: str, repository: str) -> None:
    assert images.registry_of(image) == registry
    assert builds.repository_of(image) == repository


def test_build_argv_has_inline_cache_only_with_buildkit() -> None:
    common = dict(
        context="/ctx",
        dockerfile="/ctx/Dockerfile",
        tag="r/x:1",
        args={"A": "1"},
        target="runtime",
        labels={"l": "v"},
        cache_from=["r/x:0"],
    )
    with_kit = docker_cli.build_args(**common, buildkit=True)
    assert "BUILDKIT_INLINE_CACHE=1" in with_kit and "plain" in with_kit
    assert with_kit[-1] == "/ctx" and with_kit[-3:-1] == ["--cache-from", "r/x:0"]
    assert "BUILDKIT_INLINE_CACHE=1" not in docker_cli.build_args(**common, buildkit=False)
