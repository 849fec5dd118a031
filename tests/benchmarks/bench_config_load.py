"""Benchmark: load + validate + plan a config repo of 1,000 projects × 4 environments.

Run as a plain script (pytest does not collect it: no ``test_`` names)::

    python tests/benchmarks/bench_config_load.py [--projects 1000] [--commits 20]

It generates a realistic config repo straight into Git with pygit2 (varied deploy types,
build blocks, variables and secret references, members, webhook and schedule triggers,
pipelines with ``when:`` conditions, canary / blue-green / rolling strategies, release
windows, label selectors), records a deployed state on ``refs/quicflow/state`` in which
most environments are up to date, and prints:

a. the floor: read every blob with pygit2 and parse it with libyaml (``CSafeLoader``),
   best of 3 — no tool can load the repo faster than this;
b. cold load + validate + plan: a new ``Loader`` loads HEAD, ``History.deployed()``
   reads the state ref, ``planning.plan`` pairs them — best of 3;
c. incremental: after a commit that changes one environment's version, the same work
   with the warm loader and history — median (and max) of ``--commits`` commits;
d. the ratio cold / floor.

Budgets (``DESIGN.md``): cold ≤ 2 s and ≤ 4× the floor; incremental ≤ 20 ms.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygit2
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from reconciler.gitops import history, planning  # noqa: E402
from reconciler.gitops.loading import Loader  # noqa: E402
from reconciler.gitops.repository import STATE_REF, GitRepository  # noqa: E402

ENVIRONMENTS = ("dev", "staging", "perf", "prod")
USERS = [f"user{i:02d}" for i in range(60)]
AGENTS = [
    (f"{role}-{i}", role, zone)
    for role in ("web", "api", "worker")
    for i, zone in ((n, ("eu-1", "eu-2", "us-1")[n % 3]) for n in range(1, 11))
]
COLD_BUDGET_S, RATIO_BUDGET, INCREMENTAL_BUDGET_MS = 2.0, 4.0, 20.0


# -- generating the repo -----------------------------------------------------------


def global_files() -> dict[str, str]:
    users = "\n".join(
        f"  - {{username: {u}, email: {u}@example.com{', is_admin: true' if i < 3 else ''}}}"
        for i, u in enumerate(USERS)
    )
    agents = "\n".join(
        f"  - {{name: {name}, address: '10.0.{i // 250}.{i % 250}', labels: {{role: {role}, zone: {zone}}}}}"
        for i, (name, role, zone) in enumerate(AGENTS)
    )
    quicflow = f"""\
# yaml-language-server: $schema=../schemas/quicflow.schema.json
settings:
  poll_interval: 30s
  branch: main
  public_url: https://deploy.example.com
  store: {{backend: sqlite}}
  logs: {{backend: local, retention: 14d}}
  config_webhook: {{source: gitlab, secret: config-webhook}}
users:
{users}
agents:
{agents}
callbacks:
  - name: ops-feishu
    type: feishu
    url: https://open.feishu.cn/open-apis/bot/v2/hook/ops
    format: interactive
    secret: feishu-signing
    events: [run_failed, rolled_back, approval_requested]
    retry: {{attempts: 5, backoff: 2s, max_backoff: 1m}}
  - name: ops-hook
    type: webhook
    url: https://hooks.example.com/quicflow
    template: "{{{{ project }}}}/{{{{ env }}}}: {{{{ event }}}} ({{{{ version }}}})"
alert_rules:
  - {{name: prod-failures, event: deploy_failed, environment: prod, severity: critical, callbacks: [ops-feishu]}}
  - {{name: rollbacks, event: rolled_back, mode: digest, window: 10m, callbacks: [ops-hook]}}
"""
    credentials = """\
credentials:
  registry-main: {type: username_password, description: shared image registry}
  config-webhook: {type: access_token, description: config repo webhook secret}
  feishu-signing: {type: access_token, description: Feishu bot signing key}
  git-readonly: {type: access_token, description: read-only token for app repos}
sops:
  version: 3.8.1
  lastmodified: "2026-01-01T00:00:00Z"
  mac: ENC[AES256_GCM,data:abc,iv:def,tag:ghi,type:str]
"""
    return {"quicflow.yaml": quicflow, "credentials.sops.yaml": credentials}


def project_files(index: int, rng: random.Random) -> dict[str, str]:
    name = f"svc-{index:04d}"
    base = f"projects/{name}"
    kind = ("container", "script", "git_pull", "container")[index % 4]
    owner, *others = rng.sample(USERS, 4)
    members = "\n".join(
        [f"  - {{user: {owner}, role: owner}}"]
        + [
            f"  - {{user: {u}, role: {r}}}"
            for u, r in zip(others, ("maintainer", "developer", "viewer"), strict=True)
        ]
    )
    port = 8000 + index % 1000
    own_creds = index % 3 == 0
    lines = [
        "# yaml-language-server: $schema=../../../schemas/project.schema.json",
        f"description: Service {index} ({kind} deploy)",
        "repo:",
        f"  url: https://git.example.com/acme/{name}.git",
        f"  branch: {'main' if index % 5 else 'trunk'}",
        f"  credential: {f'{name}-git' if own_creds else 'git-readonly'}",
        "members:",
        members,
    ]
    if kind == "container":
        lines += [
            "build:",
            "  enabled: true",
            "  dockerfile: Dockerfile",
            f"  target_image: registry.example.com/acme/{name}:{{{{ version }}}}",
            "  registry_credential: registry-main",
            f"  args: {{APP_PORT: {port}}}",
            "  timeout: 15m",
        ]
    lines += [
        "variables:",
        f"  PORT: {port}",
        f"  LOG_LEVEL: {rng.choice(['info', 'warning', 'debug'])}",
        f"  SERVICE_NAME: {name}",
        f'  FEATURE_FLAGS: "{",".join(rng.sample(["a", "b", "c", "d", "e"], 2))}"',
    ]
    if own_creds:
        lines.append(f"  DB_PASSWORD: {{secret: {name}-db, field: password}}")
    lines += ["deploy:", f"  type: {kind}", "  timeout: 5m"]
    if kind == "container":
        lines += [
            "  container:",
            f'    ports: ["{port}:{port}"]',
            "    restart_policy: unless-stopped",
            f"    resources: {{cpus: {rng.choice([0.5, 1, 2])}, memory: {rng.choice(['256m', '512m', '1g'])}}}",
            "    registry_credential: registry-main",
        ]
    elif kind == "script":
        lines += [
            "  script:",
            f'    run: ./deploy.sh {name} "$QUICFLOW_VERSION"',
            "    shell: /bin/bash",
        ]
    else:
        lines += [
            "  git_pull:",
            f"    directory: /srv/{name}",
            f"    restart: systemctl restart {name}",
        ]
    lines += ["  health:", f"    http: {{path: /healthz, port: {port}}}", "    retries: 3"]
    if index % 2 == 0:
        lines += [
            "pipeline:",
            "  stages:",
            "    - name: test",
            "      tasks:",
            "        - {name: unit, run: make test, timeout: 10m}",
            "        - {name: lint, run: make lint, when: \"env != 'prod'\"}",
            "    - name: release",
            "      approval: {roles: [owner, maintainer], environments: [prod]}",
            "      tasks:",
            "        - {name: deploy, uses: deploy}",
            "        - {name: smoke, run: ./smoke.sh, run_on: targets, when: \"startswith(version, '2.')\"}",
        ]
    triggers = []
    if index % 3 == 0:
        triggers += [
            "  webhooks:",
            f'    - {{name: on-push, source: gitlab, secret: {name}-webhook, branches: [main, "release/**"], action: deploy, target_env: dev}}',
        ]
    if index % 7 == 0:
        triggers += [
            "  schedules:",
            f'    - {{name: nightly, cron: "{index % 60} 2 * * *", timezone: Asia/Shanghai, action: deploy, target_env: staging}}',
        ]
    if triggers:
        lines += ["triggers:", *triggers]
    if index % 10 == 0:
        lines += [
            "alert_rules:",
            f"  - {{name: {name}-canary, event: canary_failed, severity: critical, callbacks: [ops-feishu, ops-hook]}}",
        ]
    files = {f"{base}/project.yaml": "\n".join(lines) + "\n"}
    if own_creds:
        files[f"{base}/credentials.sops.yaml"] = (
            "credentials:\n"
            f"  {name}-git: {{type: access_token, description: clone token}}\n"
            f"  {name}-db: {{type: username_password, password: 'ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]'}}\n"
            f"  {name}-webhook: {{type: access_token}}\n"
        )
    major = 1 + index % 3
    for env in ENVIRONMENTS:
        files[f"{base}/environments/{env}.yaml"] = environment_text(index, env, major, rng)
    return files


def environment_text(index: int, env: str, major: int, rng: random.Random) -> str:
    minor, patch = rng.randrange(20), rng.randrange(10)
    role = ("web", "api", "worker")[index % 3]
    lines = [
        "# yaml-language-server: $schema=../../../../schemas/environment.schema.json",
        f'version: "{major}.{minor}.{patch}"',
    ]
    if env == "prod":
        lines.append("protected: true")
    if env == "dev":
        lines += ["targets:", f"  - {{local: dev-{index % 5}}}"]
    elif env == "prod" and index % 2:
        lines += ["targets:", f"  - selector: {{role: {role}}}"]
    else:
        picks = rng.sample([a for a in AGENTS if a[1] == role], 2 if env != "prod" else 4)
        lines += ["targets:", *(f"  - {{agent: {name}}}" for name, _, _ in picks)]
    style = index % 5
    if env == "prod" and style in (0, 1):
        lines += [
            "strategy:",
            "  type: canary",
            "  canary:",
            f"    steps: {rng.choice(['[10, 50, 100]', '[25, 100]', '[5, 20, 50, 100]'])}",
            "    analysis: {window: 5m, interval: 30s, failure_threshold: 2}",
            "    pause: 5m",
        ]
    elif env == "prod" and style == 2:
        lines += [
            "strategy:",
            "  type: blue_green",
            "  blue_green:",
            "    switch: ./switch-traffic.sh",
            f"    ports: {{blue: {9000 + index % 500}, green: {9500 + index % 500}}}",
            "    rollback_window: 30m",
        ]
    elif env in ("staging", "prod"):
        lines += [
            "strategy:",
            "  type: rolling",
            f"  rolling: {{batch_size: {rng.choice([1, 2, '50%'])!r}, pause: 30s}}".replace(
                "'", '"'
            ),
        ]
    lines += [
        "variables:",
        f"  LOG_LEVEL: {'debug' if env == 'dev' else 'info'}",
        f"  REPLICAS: {1 if env == 'dev' else rng.choice([2, 3, 4])}",
        f"  ENV_LABEL: {env}-{index}",
    ]
    if env == "prod" and index % 4 == 0:
        lines += [
            "release_windows:",
            '  - {timezone: Asia/Shanghai, days: [mon, tue, wed, thu], start: "10:00", end: "16:00"}',
        ]
    if env == "perf":
        lines += ["overrides:", "  deploy:", "    timeout: 15m"]
    return "\n".join(lines) + "\n"


def generate(path: Path, projects: int) -> tuple[GitRepository, str, int]:
    rng = random.Random(20261129)
    files = global_files()
    for i in range(projects):
        files.update(project_files(i, rng))
    data = {name: text.encode() for name, text in files.items()}
    repo, commit = GitRepository.create(
        path, data, f"{projects} projects × {len(ENVIRONMENTS)} environments"
    )
    return repo, commit, sum(len(b) for b in data.values())


def record_state(repo: GitRepository, commit: str) -> None:
    """Deployed state as the reconciler would leave it: most up to date, some behind."""
    desired = Loader(repo).load(commit).raise_for_problems()
    rng = random.Random(7)
    files: dict[str, bytes | None] = {}
    for env in desired.environments():
        behind = rng.random() < 0.1
        record = planning.DeployedRecord(
            project=env.project,
            env=env.name,
            version="0.9.0" if behind else env.version,
            config_hash=env.config_hash,
            config_commit=commit,
            strategy=env.strategy.type.value,
            outcome="succeeded",
            run_id=f"run-{rng.randrange(10**6)}",
            started_at="2026-11-28T10:00:00Z",
            finished_at="2026-11-28T10:03:00Z",
            targets=tuple(t.label for t in env.targets),
        )
        files[f"{env.project}/{env.name}.json"] = history.render_record(record)
    repo.commit_files(STATE_REF, files, "deployed state of the benchmark")


# -- measuring ---------------------------------------------------------------------


def floor(path: Path) -> tuple[float, int]:
    """Read every blob of HEAD with pygit2 and parse it with libyaml; (seconds, files)."""
    start = time.perf_counter()
    repo = pygit2.Repository(str(path))
    count = 0
    stack = [repo.head.peel(pygit2.Commit).tree]
    while stack:
        tree = stack.pop()
        for entry in tree:
            if entry.type_str == "tree":
                stack.append(repo[entry.id])
            else:
                yaml.load(repo[entry.id].data, Loader=yaml.CSafeLoader)  # noqa: S506
                count += 1
    return time.perf_counter() - start, count


def load_and_plan(
    loader: Loader, hist: history.History, planner: planning.Planner | None = None
) -> tuple[planning.Plan, list[float]]:
    """Load HEAD, read the deployed state, plan; the plan and seconds of each of the three."""
    t0 = time.perf_counter()
    desired = loader.load("HEAD").raise_for_problems()
    t1 = time.perf_counter()
    state_commit, deployed = hist.deployed()
    t2 = time.perf_counter()
    planner = planner or planning.Planner()
    the_plan = planner.plan(desired, deployed, state_commit=state_commit)
    t3 = time.perf_counter()
    return the_plan, [t1 - t0, t2 - t1, t3 - t2]


def cold(path: Path) -> tuple[float, planning.Plan]:
    """A fresh process's view: open the repo, new loader and history, load + plan HEAD."""
    start = time.perf_counter()
    repo = GitRepository.open(path)
    the_plan, _ = load_and_plan(Loader(repo), history.History(repo))
    return time.perf_counter() - start, the_plan


def best_of(n: int, run: Callable[[], tuple[float, Any]]) -> tuple[float, Any]:
    results = [run() for _ in range(n)]
    return min(results, key=lambda r: r[0])


def incremental(path: Path, projects: int, commits: int) -> list[list[float]]:
    """[load, deployed, plan] seconds with warm caches after each one-environment commit."""
    repo = GitRepository.open(path)
    loader, hist, planner = Loader(repo), history.History(repo), planning.Planner()
    load_and_plan(loader, hist, planner)  # warm up: the reconciler has loaded the previous commit
    gc.collect()
    gc.freeze()  # as the reconciler does after its first load
    rng = random.Random(3)
    times = []
    for n in range(commits):
        project = f"svc-{rng.randrange(projects):04d}"
        env = rng.choice(ENVIRONMENTS)
        name = f"projects/{project}/environments/{env}.yaml"
        text = repo.blob(_blob_id(repo, name)).decode()
        lines = [
            f'version: "7.{n}.0"' if line.startswith("version:") else line
            for line in text.splitlines()
        ]
        repo.commit_files(
            "refs/heads/main", {name: ("\n".join(lines) + "\n").encode()}, f"bump {project}/{env}"
        )
        the_plan, split = load_and_plan(loader, hist, planner)
        times.append(split)
        # The figure only counts if the change was seen: that environment must now deploy.
        action = next(a for a in the_plan.actions if (a.project, a.env) == (project, env))
        assert action.to_version == f"7.{n}.0" and action.kind.is_change, action
    return times


def _blob_id(repo: GitRepository, path: str) -> str:
    tree = repo.root_tree(repo.resolve("HEAD"))
    *dirs, leaf = path.split("/")
    for part in dirs:
        tree = next(e.id for e in repo.entries(tree) if e.name == part)
    return next(e.id for e in repo.entries(tree) if e.name == leaf)


def verdict(ok: bool) -> str:
    return "ok" if ok else "OVER"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quicflow-bench-") as tmp:
        path = Path(tmp) / "config"
        t0 = time.perf_counter()
        repo, commit, size = generate(path, args.projects)
        record_state(repo, commit)
        print(
            f"generated {args.projects} projects × {len(ENVIRONMENTS)} environments "
            f"({size / 1e6:.1f} MB of YAML) and their deployed state in {time.perf_counter() - t0:.1f} s"
        )

        floor_s, files = best_of(3, lambda: floor(path))
        cold_s, cold_plan = best_of(3, lambda: cold(path))
        inc = incremental(path, args.projects, args.commits)
        totals = [sum(split) for split in inc]
        inc_median, inc_max = statistics.median(totals) * 1000, max(totals) * 1000
        load_ms, state_ms, plan_ms = (statistics.median(s[i] for s in inc) * 1000 for i in range(3))
        ratio = cold_s / floor_s

        counts = ", ".join(f"{k} {v}" for k, v in cold_plan.counts.items())
        print(f"plan of HEAD: {len(cold_plan.actions)} actions ({counts})")
        print(
            f"(a) floor: pygit2 read + libyaml parse of {files} files, best of 3: {floor_s:.3f} s"
        )
        print(
            f"(b) cold load+validate+plan, best of 3: {cold_s:.3f} s "
            f"[budget {COLD_BUDGET_S:.1f} s: {verdict(cold_s <= COLD_BUDGET_S)}]"
        )
        print(
            f"(c) load+plan after a one-file commit, warm, median of {len(inc)}: {inc_median:.1f} ms "
            f"(max {inc_max:.1f} ms; medians: load {load_ms:.1f} ms, deployed state "
            f"{state_ms:.1f} ms, plan {plan_ms:.1f} ms) "
            f"[budget {INCREMENTAL_BUDGET_MS:.0f} ms: {verdict(inc_median <= INCREMENTAL_BUDGET_MS)}]"
        )
        print(
            f"(d) cold / floor: {ratio:.2f}x [budget {RATIO_BUDGET:.0f}x: {verdict(ratio <= RATIO_BUDGET)}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
