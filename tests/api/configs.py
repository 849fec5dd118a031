"""The config repos of the API tests: one user per role, webhooks of every provider, a schedule.

``API_FILES`` releases straight through: ``app/dev`` has one local target (``dev-1``),
``app/prod`` is protected with two (``web-1``, ``web-2``); every target runs the deploy
script as a real subprocess. The script answers to the version it deploys, so a test
gets the run it needs from the real engine by choosing a version:

- a version ending in ``-fails`` fails its deploy (exit code 3);
- a version ending in ``-slow`` prints ``SLOW_LINE`` and sleeps until the run is
  cancelled (the engine kills the process group);
- any other version prints ``deploy`` and succeeds.

``GATED_FILES`` is the same repo with gates on every environment: the stage waits for
an approval (owner, maintainer or developer — the project matrix still keeps
developers out of protected prod) and a canary releases half the targets, then waits
for a manual promote. Its runs stop at ``approval:release`` and then at ``promote:1``.
"""

from __future__ import annotations

HOOK_SECRET = "app-hook-secret-5f1d0c"
CONFIG_HOOK_SECRET = "config-hook-secret-93aa"

ROLES = {"olga": "owner", "mike": "maintainer", "dev": "developer", "vic": "viewer"}
SLOW_LINE = "<script>alert(1)</script> ok"
APPROVAL_GATE = "approval:release"
PROMOTE_GATE = "promote:1"

DEPLOY = f"""\
deploy:
  type: script
  script:
    run: |
      case "$QUICFLOW_VERSION" in
        *-fails) echo "deploy of $QUICFLOW_VERSION fails on purpose" >&2; exit 3 ;;
        *-slow) echo '{SLOW_LINE}'; exec sleep 60 ;;
      esac
      echo deploy
"""

GATES = """\
strategy:
  type: canary
  canary: {steps: [50, 100], analysis: {window: 0s}, promotion: manual}
pipeline:
  stages:
    - name: release
      approval: {roles: [owner, maintainer, developer]}
      tasks:
        - {name: deploy, uses: deploy}
"""

PROJECT = f"""\
description: the application
members:
  - {{user: olga, role: owner}}
  - {{user: mike, role: maintainer}}
  - {{user: dev, role: developer}}
  - {{user: vic, role: viewer}}
{DEPLOY}triggers:
  webhooks:
    - {{name: gh, source: github, secret: app-hook, branches: [main, "release/*"], events: [push, tag], action: deploy, target_env: dev}}
    - {{name: gl, source: gitlab, secret: app-hook, branches: [main], events: [push, tag], action: deploy, target_env: dev}}
    - {{name: ge, source: gitee, secret: app-hook, branches: [main], events: [push], action: deploy, target_env: dev}}
    - {{name: gh-build, source: github, secret: app-hook, events: [tag], action: build}}
    - {{name: gh-off, source: github, secret: app-hook, action: deploy, target_env: dev, enabled: false}}
  schedules:
    - {{name: nightly, cron: "0 2 * * *", timezone: Asia/Shanghai, action: deploy, target_env: dev}}
    - {{name: hourly-skip, cron: "30 * * * *", action: deploy, target_env: prod, missed: skip}}
"""

API_FILES = {
    "quicflow.yaml": """\
settings:
  config_webhook: {source: github, secret: config-hook}
users:
  - {username: alice, email: alice@example.com, display_name: Alice Admin, is_admin: true}
  - {username: olga, email: olga@example.com}
  - {username: mike, email: mike@example.com}
  - {username: dev, email: dev@example.com}
  - {username: vic, email: vic@example.com}
  - {username: nora, email: nora@example.com}
agents:
  - {name: web-1, labels: {role: web}}
""",
    "projects/app/project.yaml": PROJECT,
    "projects/app/environments/dev.yaml": 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\n',
    "projects/app/environments/prod.yaml": (
        'version: "1.0.0"\nprotected: true\ntargets:\n  - {local: web-1}\n  - {local: web-2}\n'
    ),
    "projects/other/project.yaml": """\
members:
  - {user: nora, role: owner}
deploy:
  type: script
  script: {run: "echo deploy"}
""",
    "projects/other/environments/dev.yaml": 'version: "0.1.0"\ntargets:\n  - {local: dev-1}\n',
}

GATED_FILES = {**API_FILES, "projects/app/project.yaml": PROJECT.replace(DEPLOY, DEPLOY + GATES)}
