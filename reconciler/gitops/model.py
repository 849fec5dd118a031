"""The desired-state model: typed, immutable objects built from the config repo.

Purely data: no I/O, no parsing, no validation (the JSON Schemas do that once, at
load). Driver-specific blocks (``deploy.container`` and friends) stay read-only
mappings here because each driver owns its reading of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    # dataclasses refuse an unhashable default; a factory returning the shared
    # read-only mapping costs nothing.
    return EMPTY


class DeployType(StrEnum):
    CONTAINER = "container"
    KUBERNETES = "kubernetes"
    SCRIPT = "script"
    GIT_PULL = "git_pull"


class StrategyType(StrEnum):
    ROLLING = "rolling"
    CANARY = "canary"
    BLUE_GREEN = "blue_green"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A variable whose value is a credential field; resolved and masked at run time."""

    credential: str
    field: str | None = None

    def __str__(self) -> str:
        return f"<secret {self.credential}{'.' + self.field if self.field else ''}>"


Value: TypeAlias = str | int | float | bool | None | SecretRef

# How long a step may run when its config names no timeout: a hung script, pull or
# build never holds a run forever. Changed repository-wide by ``settings.timeouts``.
DEFAULT_TASK_TIMEOUT = 30 * 60.0
DEFAULT_DEPLOY_TIMEOUT = 30 * 60.0
DEFAULT_BUILD_TIMEOUT = 60 * 60.0


@dataclass(frozen=True, slots=True)
class StepTimeouts:
    """The default timeouts (seconds) of ``run:`` tasks, deploy commands and image builds."""

    task: float = DEFAULT_TASK_TIMEOUT
    deploy: float = DEFAULT_DEPLOY_TIMEOUT
    build: float = DEFAULT_BUILD_TIMEOUT


DEFAULT_HUB_HEARTBEAT = 15.0


@dataclass(frozen=True, slots=True)
class HubSettings:
    """``settings.quic``: the hub's address, heartbeat, reconnect grace and certificate.

    ``serve`` reads them at start; None means not set (its flags or defaults decide).
    """

    listen: str | None = None
    heartbeat: float = DEFAULT_HUB_HEARTBEAT
    reconnect_grace: float | None = None  # None: 4 heartbeats
    names: tuple[str, ...] = ()  # extra DNS names / IPs for the generated certificate
    certificate: str | None = None  # an operator's certificate and key (paths), instead
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where an object was declared: a file of the config repo (relative to its root)."""

    path: str
    blob: str = ""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    email: str
    display_name: str = ""
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class Agent:
    """A host running ``quicflow agent``, as declared in quicflow.yaml."""

    name: str
    labels: Mapping[str, str] = field(default_factory=_empty)
    address: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A credential's metadata (never its value), as readable without decryption."""

    name: str
    type: str
    description: str = ""
    project: str | None = None  # None: global scope
    source: Source = Source("")


@dataclass(frozen=True, slots=True)
class Callback:
    """A notification channel (CallbackConfig)."""

    name: str
    type: str
    url: str
    events: tuple[str, ...] = ()
    secret: str | None = None
    format: str | None = None
    template: str | None = None
    retry: Mapping[str, Any] = field(default_factory=_empty)
    enabled: bool = True
    project: str | None = None


@dataclass(frozen=True, slots=True)
class AlertRule:
    """An alert rule (AlertRule): which event, where, how loud, to which callbacks."""

    name: str
    event: str
    callbacks: tuple[str, ...]
    environment: str = "all"
    severity: str = "warning"
    mode: str = "immediate"
    window: float | None = None
    enabled: bool = True
    project: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Repository-wide settings from quicflow.yaml, with defaults applied."""

    poll_interval: float = 60.0
    branch: str = "main"
    push_history: bool = True
    enforce_policy: bool = False
    public_url: str | None = None
    anonymous_status_page: bool = False
    http_listen: str | None = None  # None: serve's --http or its default
    quic: HubSettings = HubSettings()
    store: Mapping[str, Any] = field(default_factory=_empty)
    logs: Mapping[str, Any] = field(default_factory=_empty)
    features: Mapping[str, bool] = field(default_factory=_empty)
    max_concurrent_builds: int = 2
    config_webhook: Mapping[str, Any] | None = None
    timeouts: StepTimeouts = StepTimeouts()


@dataclass(frozen=True, slots=True)
class Member:
    """A project member (ProjectMember) and their role."""

    user: str
    role: str
    added_by: str | None = None


@dataclass(frozen=True, slots=True)
class Repo:
    url: str
    branch: str = "main"
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """Docker image build (BuildConfig)."""

    enabled: bool = False
    dockerfile: str = "Dockerfile"
    context: str = "."
    target: str | None = None
    args: Mapping[str, str] = field(default_factory=_empty)
    target_image: str | None = None
    registry_credential: str | None = None
    cache: bool = True
    timeout: float = DEFAULT_BUILD_TIMEOUT


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """How a release reaches targets: the driver type and its read-only settings.

    ``timeout`` bounds each command a deploy step runs on a target (deploy, restart,
    switch, retire, rollback); it is always set, to the default when the config is silent.
    ``files`` are the config-repo files the deploy names (``kubernetes.manifests``), by
    path from the config root, read by the loader at the same commit as the rest.
    """

    type: DeployType
    spec: Mapping[str, Any] = field(default_factory=_empty)
    health: Mapping[str, Any] = field(default_factory=_empty)
    timeout: float = DEFAULT_DEPLOY_TIMEOUT
    files: Mapping[str, str] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class Approval:
    roles: tuple[str, ...] = ("owner", "maintainer")
    timeout: float | None = None
    environments: tuple[str, ...] = ()  # empty: every environment

    def applies_to(self, env: str) -> bool:
        return not self.environments or env in self.environments


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a stage, with variables and deploy merged down to task level."""

    name: str
    uses: str | None = None
    run: str | None = None
    on: str = "reconciler"
    when: str | None = None
    timeout: float = DEFAULT_TASK_TIMEOUT  # of each attempt of a ``run:`` task
    retries: int = 0
    variables: Mapping[str, Value] = field(default_factory=_empty)
    deploy: DeployConfig | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    tasks: tuple[Task, ...]
    when: str | None = None
    approval: Approval | None = None


@dataclass(frozen=True, slots=True)
class Pipeline:
    stages: tuple[Stage, ...]


@dataclass(frozen=True, slots=True)
class Strategy:
    """The rollout strategy and its parameters (already defaulted)."""

    type: StrategyType = StrategyType.ROLLING
    params: Mapping[str, Any] = field(default_factory=_empty)
    auto_rollback: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """One entry of an environment's targets: an agent, a label selector, or a local target."""

    agent: str | None = None
    selector: Mapping[str, str] = field(default_factory=_empty)
    local: str | None = None
    address: str | None = None
    port: int | None = None

    @property
    def label(self) -> str:
        if self.agent:
            return self.agent
        if self.local:
            return f"local:{self.local}"
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


@dataclass(frozen=True, slots=True)
class ReleaseWindow:
    """When releases may start (fields as ``reconciler.rules.windows`` reads them)."""

    weekdays: tuple[str, ...]
    start: str
    end: str
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class WebhookTrigger:
    """A Git-host webhook that starts an action (WebhookTrigger)."""

    project: str
    name: str
    source: str
    secret: str
    action: str
    branches: tuple[str, ...] = ()
    events: tuple[str, ...] = ("push",)
    target_env: str | None = None
    enabled: bool = True

    @property
    def id(self) -> str:
        return f"{self.project}.{self.name}"


@dataclass(frozen=True, slots=True)
class ScheduleTrigger:
    """A cron schedule that starts an action (ScheduleTrigger)."""

    project: str
    name: str
    cron: str
    action: str
    target_env: str
    timezone: str = "UTC"
    missed: str = "run_once"
    enabled: bool = True

    @property
    def id(self) -> str:
        return f"{self.project}.{self.name}"


@dataclass(frozen=True, slots=True)
class Environment:
    """One project environment with every setting merged (project → environment)."""

    project: str
    name: str
    version: str
    tier: str
    protected: bool
    strategy: Strategy
    deploy: DeployConfig
    build: BuildConfig
    pipeline: Pipeline
    variables: Mapping[str, Value] = field(default_factory=_empty)
    targets: tuple[Target, ...] = ()
    release_windows: tuple[ReleaseWindow, ...] = ()
    auto_update: bool = False
    config_hash: str = ""
    source: Source = Source("")
    # ``approval.four_eyes``: whoever wrote the change or started the run may not approve it.
    four_eyes: bool = False

    @property
    def key(self) -> str:
        return f"{self.project}/{self.name}"


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    members: tuple[Member, ...]
    environments: Mapping[str, Environment]
    description: str = ""
    repo: Repo | None = None
    variables: Mapping[str, Value] = field(default_factory=_empty)
    webhooks: tuple[WebhookTrigger, ...] = ()
    schedules: tuple[ScheduleTrigger, ...] = ()
    callbacks: tuple[Callback, ...] = ()
    alert_rules: tuple[AlertRule, ...] = ()
    # Hash of what only owners/maintainers may change and of the member list, so the
    # planner can tell which roles a change needs without re-reading files.
    settings_hash: str = ""
    members_hash: str = ""
    source: Source = Source("")

    def role_of(self, username: str) -> str | None:
        for m in self.members:
            if m.user == username:
                return m.role
        return None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the config repo declares at one commit."""

    commit: str
    settings: Settings
    users: Mapping[str, User]
    projects: Mapping[str, Project]
    agents: Mapping[str, Agent] = field(default_factory=_empty)
    callbacks: tuple[Callback, ...] = ()
    alert_rules: tuple[AlertRule, ...] = ()
    credentials: Mapping[str, CredentialInfo] = field(default_factory=_empty)
    project_credentials: Mapping[str, Mapping[str, CredentialInfo]] = field(default_factory=_empty)

    def environments(self) -> Iterator[Environment]:
        """Every environment, ordered by project then environment name."""
        for pname in sorted(self.projects):
            envs = self.projects[pname].environments
            for ename in sorted(envs):
                yield envs[ename]

    def environment(self, project: str, env: str) -> Environment | None:
        p = self.projects.get(project)
        return p.environments.get(env) if p else None

    def user_by_email(self, email: str) -> User | None:
        wanted = email.strip().lower()
        for u in self.users.values():
            if u.email.lower() == wanted:
                return u
        return None

    def credential_for(self, name: str, project: str | None) -> CredentialInfo | None:
        """The credential a project may use by that name: its own first, then global."""
        if project is not None:
            own = self.project_credentials.get(project, EMPTY).get(name)
            if own is not None:
                return own
        return self.credentials.get(name)
