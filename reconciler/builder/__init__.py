"""Image builds: check out an application repo, build with BuildKit, push, record the artifact.

``building`` orchestrates one build (checkout → checks → login → build → push → record)
and bounds how many run; ``records`` keeps build records and image artifacts in the
operational store; ``dockerfiles`` holds the pure checks and templates (no I/O);
``docker_cli`` is the one adapter that talks to Docker (the CLI, as subprocesses).
Nothing here decides *what* to deploy: a build only produces an artifact.
"""
