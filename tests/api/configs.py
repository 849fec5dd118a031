"""The config repo of the API tests: one user per role, webhooks of every provider, a schedule."""

from __future__ import annotations

HOOK_SECRET = "app-hook-secret-5f1d0c"
CONFIG_HOOK_SECRET = "config-hook-secret-93aa"

ROLES = {"olga": "owner", "mike": "maintainer", "dev": "developer", "vic": "viewer"}

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
    "projects/app/project.yaml": """\
description: the application
members:
  - {user: olga, role: owner}
  - {user: mike, role: maintainer}
  - {user: dev, role: developer}
  - {user: vic, role: viewer}
deploy:
  type: script
  script: {run: "echo deploy"}
triggers:
  webhooks:
    - {name: gh, source: github, secret: app-hook, branches: [main, "release/*"], events: [push, tag], action: deploy, target_env: dev}
    - {name: gl, source: gitlab, secret: app-hook, branches: [main], events: [push, tag], action: deploy, target_env: dev}
    - {name: ge, source: gitee, secret: app-hook, branches: [main], events: [push], action: deploy, target_env: dev}
    - {name: gh-build, source: github, secret: app-hook, events: [tag], action: build}
    - {name: gh-off, source: github, secret: app-hook, action: deploy, target_env: dev, enabled: false}
  schedules:
    - {name: nightly, cron: "0 2 * * *", timezone: Asia/Shanghai, action: deploy, target_env: dev}
    - {name: hourly-skip, cron: "30 * * * *", action: deploy, target_env: prod, missed: skip}
""",
    "projects/app/environments/dev.yaml": 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\n',
    "projects/app/environments/prod.yaml": 'version: "1.0.0"\nprotected: true\ntargets:\n  - {agent: web-1}\n',
    "projects/other/project.yaml": """\
members:
  - {user: nora, role: owner}
deploy:
  type: script
  script: {run: "echo deploy"}
""",
    "projects/other/environments/dev.yaml": 'version: "0.1.0"\ntargets:\n  - {local: dev-1}\n',
}
