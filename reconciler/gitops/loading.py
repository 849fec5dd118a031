"""Load the desired state from one commit of the config repo: parse, validate, build.

The loader reads trees and blobs of a commit through ``GitRepository`` — never a
working copy — and reports every problem at once as ``path:line:column: message (at
json.path)``. It caches by content, the way Git names it:

- a parsed and schema-checked file by ``(kind, blob id)``: a commit that touches one
  file re-parses one file;
- a built project by ``(name, project tree id, global files)``: an untouched project
  directory is reused whole, so a one-file commit costs one project's work;
- the whole result by the config root's tree id: a commit that changes nothing under
  the config directory costs nothing.

A file larger than ``MAX_FILE_BYTES`` (1 MiB) is reported, not parsed.

Layout of a config repo::

    quicflow.yaml
    credentials.sops.yaml                      (optional)
    projects/<project>/project.yaml
    projects/<project>/credentials.sops.yaml   (optional)
    projects/<project>/environments/<env>.yaml
    projects/<project>/<dir>/*.yaml            (optional: Kubernetes manifests, read when
                                                deploy.kubernetes.manifests names them)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from reconciler.errors import ConfigError, ConfigProblem
from reconciler.gitops import building, checking, merging, model, parsing, schemas
from reconciler.gitops.repository import GitRepository, TreeEntry

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_YAML = (".yaml", ".yml")
GLOBAL_FILE = "quicflow.yaml"
CREDENTIALS_FILE = "credentials.sops.yaml"
PROJECT_FILE = "project.yaml"
#: The largest config file read (a file over it is reported, not parsed): a config file is
#: a few kilobytes; a huge one is a mistake that would cost seconds and memory every load.
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The outcome of loading one commit: a desired state, or the problems that prevent it."""

    commit: str
    desired: model.DesiredState | None
    problems: tuple[ConfigProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.desired is not None

    def raise_for_problems(self) -> model.DesiredState:
        if self.desired is None:
            raise ConfigError(self.problems)
        return self.desired


@dataclass(slots=True)
class LoadStats:
    """Counters that show the caches at work (tests and benchmarks read them)."""

    parsed_files: int = 0
    built_projects: int = 0


@dataclass(frozen=True, slots=True)
class _Doc:
    """A parsed file: its data when valid, else its problems (not yet located)."""

    data: Any
    problems: tuple[schemas.SchemaProblem | parsing.SyntaxProblem, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _ProjectResult:
    project: model.Project | None
    credentials: Mapping[str, model.CredentialInfo]
    problems: tuple[ConfigProblem, ...]


class Loader:
    """Loads commits of one config repo, reusing work across commits."""

    def __init__(self, repo: GitRepository):
        self.repo = repo
        self.stats = LoadStats()
        self._docs: dict[tuple[str, str], _Doc] = {}
        self._projects: dict[tuple[str, str, str], _ProjectResult] = {}
        self._globals: dict[str, tuple[Any, ...]] = {}
        self._last_root: str | None = None
        self._last: LoadResult | None = None

    # -- entry point ---------------------------------------------------------------

    def load(self, rev: str = "HEAD") -> LoadResult:
        """Load the config at ``rev`` (a revision or commit id)."""
        commit = self.repo.resolve(rev)
        root = self.repo.root_tree(commit)
        where = self.repo.subdir or "."
        if root is None:
            problem = ConfigProblem(
                where, f"config directory {where!r} does not exist at commit {commit[:10]}"
            )
            return LoadResult(commit, None, (problem,))
        if root == self._last_root and self._last is not None:
            return self._reuse(self._last, commit)
        result = self._load_tree(commit, root)
        self._last_root, self._last = root, result
        return result

    def global_settings(
        self, rev: str = "HEAD"
    ) -> tuple[model.Settings | None, tuple[ConfigProblem, ...]]:
        """The settings of quicflow.yaml alone at ``rev``, or its problems.

        For what ``quicflow serve`` needs before its first load (where to listen): an
        invalid project elsewhere does not hide them.
        """
        commit = self.repo.resolve(rev)
        root = self.repo.root_tree(commit)
        entry = (
            None if root is None else {e.name: e for e in self.repo.entries(root)}.get(GLOBAL_FILE)
        )
        if entry is None or entry.is_tree:
            return None, (ConfigProblem(GLOBAL_FILE, f"no {GLOBAL_FILE} at commit {commit[:10]}"),)
        doc = self._doc("quicflow", entry.id)
        if not doc.valid:
            return None, tuple(self._located(GLOBAL_FILE, entry.id, doc.problems))
        return building.settings(doc.data.get("settings")), ()

    def _reuse(self, previous: LoadResult, commit: str) -> LoadResult:
        desired = previous.desired
        if desired is not None:
            desired = _with_commit(desired, commit)
        return LoadResult(commit, desired, previous.problems)

    # -- one tree --------------------------------------------------------------------

    def _load_tree(self, commit: str, root: str) -> LoadResult:
        entries = {e.name: e for e in self.repo.entries(root)}
        problems: list[ConfigProblem] = []

        global_entry = entries.get(GLOBAL_FILE)
        if global_entry is None or global_entry.is_tree:
            problems.append(
                ConfigProblem(
                    GLOBAL_FILE, "missing quicflow.yaml at the root of the config directory"
                )
            )
            return LoadResult(commit, None, tuple(problems))
        creds_entry = entries.get(CREDENTIALS_FILE)
        global_key = f"{global_entry.id}:{creds_entry.id if creds_entry else '-'}"
        gdoc, gcreds, gproblems, ctx = self._global(global_entry, creds_entry, global_key)
        problems.extend(gproblems)
        for name, entry in entries.items():
            if (
                not entry.is_tree
                and name.endswith(_YAML)
                and name not in (GLOBAL_FILE, CREDENTIALS_FILE)
            ):
                problems.append(
                    ConfigProblem(
                        name,
                        f"unknown config file {name!r}; the root holds "
                        f"{GLOBAL_FILE}, {CREDENTIALS_FILE} and projects/",
                    )
                )

        projects: dict[str, model.Project] = {}
        project_creds: dict[str, Mapping[str, model.CredentialInfo]] = {}
        projects_entry = entries.get("projects")
        if projects_entry is not None and projects_entry.is_tree:
            for entry in self.repo.entries(projects_entry.id):
                path = f"projects/{entry.name}"
                if not entry.is_tree:
                    problems.append(
                        ConfigProblem(
                            path, "projects/ holds one directory per project; this is a file"
                        )
                    )
                    continue
                if not _NAME.match(entry.name):
                    problems.append(
                        ConfigProblem(
                            path,
                            f"invalid project name {entry.name!r}: use "
                            "lowercase letters, digits, '-' and '_'",
                        )
                    )
                    continue
                key = (entry.name, entry.id, global_key)
                result = self._projects.get(key)
                if result is None:
                    result = self._project(entry, ctx)
                    self._projects[key] = result
                problems.extend(result.problems)
                if result.project is not None:
                    projects[entry.name] = result.project
                project_creds[entry.name] = result.credentials
        elif projects_entry is not None:
            problems.append(ConfigProblem("projects", "'projects' must be a directory"))

        if problems or gdoc is None:
            return LoadResult(commit, None, tuple(sorted(problems, key=ConfigProblem.sort_key)))
        settings = building.settings(gdoc.get("settings"))
        if "branch" not in (gdoc.get("settings") or {}) and self.repo.remote_url is not None:
            # A URL without a branch: the remote's default branch is the desired state.
            settings = replace(settings, branch=self.repo.default_branch or settings.branch)
        desired = model.DesiredState(
            commit=commit,
            settings=settings,
            users=building.users(gdoc["users"]),
            projects=dict(sorted(projects.items())),
            agents=building.agents(gdoc.get("agents")),
            callbacks=building.callbacks(gdoc.get("callbacks"), None),
            alert_rules=building.alert_rules(gdoc.get("alert_rules"), None),
            credentials=gcreds,
            project_credentials=project_creds,
        )
        return LoadResult(commit, desired)

    def _global(
        self, entry: TreeEntry, creds_entry: TreeEntry | None, key: str
    ) -> tuple[
        Any, dict[str, model.CredentialInfo], list[ConfigProblem], checking.GlobalContext | None
    ]:
        cached = self._globals.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        problems: list[ConfigProblem] = []
        doc = self._doc("quicflow", entry.id)
        problems += self._located(GLOBAL_FILE, entry.id, doc.problems)
        creds: dict[str, model.CredentialInfo] = {}
        if creds_entry is not None:
            cdoc = self._doc("credentials", creds_entry.id)
            problems += self._located(CREDENTIALS_FILE, creds_entry.id, cdoc.problems)
            if cdoc.valid:
                creds = building.credentials(
                    cdoc.data, None, model.Source(CREDENTIALS_FILE, creds_entry.id)
                )
        ctx = None
        data = doc.data if doc.valid else None
        if data is not None:
            names = frozenset(creds)
            problems += self._findings(
                {GLOBAL_FILE: entry.id}, checking.check_global(GLOBAL_FILE, data, names)
            )
            ctx = checking.global_context(data, names)
        result = (data, creds, problems, ctx)
        self._globals = {key: result}  # only the newest global files are worth keeping
        return result

    def _project(self, entry: TreeEntry, ctx: checking.GlobalContext | None) -> _ProjectResult:
        self.stats.built_projects += 1
        name = entry.name
        base = f"projects/{name}"
        blobs: dict[str, str] = {}
        problems: list[ConfigProblem] = []
        children = {e.name: e for e in self.repo.entries(entry.id)}

        pentry = children.get(PROJECT_FILE)
        if pentry is None or pentry.is_tree:
            return _ProjectResult(
                None,
                {},
                (
                    ConfigProblem(
                        f"{base}/{PROJECT_FILE}", f"project {name!r} has no {PROJECT_FILE}"
                    ),
                ),
            )
        ppath = f"{base}/{PROJECT_FILE}"
        blobs[ppath] = pentry.id
        pdoc = self._doc("project", pentry.id)
        problems += self._located(ppath, pentry.id, pdoc.problems)

        creds: dict[str, model.CredentialInfo] = {}
        centry = children.get(CREDENTIALS_FILE)
        if centry is not None and not centry.is_tree:
            cpath = f"{base}/{CREDENTIALS_FILE}"
            cdoc = self._doc("credentials", centry.id)
            problems += self._located(cpath, centry.id, cdoc.problems)
            if cdoc.valid:
                creds = building.credentials(cdoc.data, name, model.Source(cpath, centry.id))
        for child, e in children.items():
            if (
                not e.is_tree
                and child.endswith(_YAML)
                and child not in (PROJECT_FILE, CREDENTIALS_FILE)
            ):
                problems.append(
                    ConfigProblem(
                        f"{base}/{child}",
                        f"unknown config file {child!r}; a project "
                        f"holds {PROJECT_FILE}, {CREDENTIALS_FILE} and environments/",
                    )
                )

        env_docs: dict[str, tuple[str, str, _Doc]] = {}
        eentry = children.get("environments")
        if eentry is not None and not eentry.is_tree:
            problems.append(
                ConfigProblem(
                    f"{base}/environments",
                    "'environments' must be a directory holding "
                    "one <env>.yaml file per environment",
                )
            )
        if eentry is not None and eentry.is_tree:
            for e in self.repo.entries(eentry.id):
                epath = f"{base}/environments/{e.name}"
                if e.is_tree or not e.name.endswith(_YAML):
                    problems.append(
                        ConfigProblem(
                            epath, "environments/ holds one <env>.yaml file per environment"
                        )
                    )
                    continue
                env_name = e.name.rsplit(".", 1)[0]
                if not _NAME.match(env_name):
                    problems.append(
                        ConfigProblem(
                            epath,
                            f"invalid environment name {env_name!r}: use "
                            "lowercase letters, digits, '-' and '_'",
                        )
                    )
                    continue
                if env_name in env_docs:
                    problems.append(
                        ConfigProblem(
                            epath, f"environment {env_name!r} is defined twice (.yaml and .yml)"
                        )
                    )
                    continue
                blobs[epath] = e.id
                edoc = self._doc("environment", e.id)
                problems += self._located(epath, e.id, edoc.problems)
                env_docs[env_name] = (epath, e.id, edoc)

        if not pdoc.valid or ctx is None:
            # Without a valid quicflow.yaml, cross-file checks would only mislead; the
            # files' own syntax and schema problems are reported all the same.
            return _ProjectResult(None, creds, tuple(problems))
        valid_envs = {n: (p, d.data) for n, (p, _, d) in env_docs.items() if d.valid}
        findings = checking.check_project(
            name, ppath, pdoc.data, valid_envs, frozenset(env_docs), frozenset(creds), ctx
        )
        problems += self._findings(blobs, findings)
        if problems:
            return _ProjectResult(None, creds, tuple(problems))
        envs = {
            n: building.environment(
                name, n, pdoc.data, data, model.Source(p, blobs[p]), ctx.timeouts
            )
            for n, (p, data) in valid_envs.items()
        }
        manifest_problems: list[checking.Finding] = []
        for n, (p, data) in valid_envs.items():
            envs[n], found = self._with_manifests(envs[n], entry.id, base, ppath, p, data)
            manifest_problems += found
        problems += self._findings(blobs, manifest_problems)
        if problems:
            return _ProjectResult(None, creds, tuple(problems))
        project = building.project(
            name, pdoc.data, dict(sorted(envs.items())), model.Source(ppath, pentry.id)
        )
        return _ProjectResult(project, creds, ())

    # -- files a deploy names -----------------------------------------------------------

    def _with_manifests(
        self,
        env: model.Environment,
        project_tree: str,
        base: str,
        ppath: str,
        epath: str,
        edata: Mapping[str, Any],
    ) -> tuple[model.Environment, list[checking.Finding]]:
        """``env`` with the files of ``deploy.kubernetes.manifests`` read into its deploys.

        The paths are relative to the project directory and stay inside it, so the
        project cache (keyed by the project's tree) sees every change to them; their blob
        ids join the config hash, so a manifest change rolls out like any config change.
        """
        declared = (edata.get("deploy") or {}).get("kubernetes") or {}
        where = epath if "manifests" in declared else ppath
        findings: list[checking.Finding] = []
        blob_ids: dict[str, str] = {}

        def read(deploy: model.DeployConfig) -> model.DeployConfig:
            raw = deploy.spec.get("manifests")
            if deploy.type is not model.DeployType.KUBERNETES or not raw:
                return deploy
            files: dict[str, str] = {}
            for path in [raw] if isinstance(raw, str) else list(raw):
                problem = self._manifest_files(project_tree, base, str(path), files, blob_ids)
                if problem:
                    findings.append(
                        checking.Finding(
                            where, ("deploy", "kubernetes", "manifests"), f"manifests: {problem}"
                        )
                    )
            return replace(deploy, files=files)

        deploy = read(env.deploy)
        stages = tuple(
            replace(
                stage,
                tasks=tuple(
                    replace(t, deploy=read(t.deploy)) if t.deploy is not None else t
                    for t in stage.tasks
                ),
            )
            for stage in env.pipeline.stages
        )
        if findings or not blob_ids:
            return env, findings
        return replace(
            env,
            deploy=deploy,
            pipeline=replace(env.pipeline, stages=stages),
            config_hash=merging.stable_hash({"config": env.config_hash, "manifests": blob_ids}),
        ), []

    def _manifest_files(
        self,
        project_tree: str,
        base: str,
        path: str,
        files: dict[str, str],
        blob_ids: dict[str, str],
    ) -> str:
        """Read the YAML file ``path``, or a directory's YAML files, into ``files``; a problem."""
        parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
        if path.startswith("/") or ".." in parts or not parts:
            return f"{path!r} must be a path inside the project directory {base}/"
        node, is_tree = project_tree, True
        for i, part in enumerate(parts):
            if not is_tree:
                return f"{base}/{'/'.join(parts[:i])} is a file, not a directory"
            found = {e.name: e for e in self.repo.entries(node)}.get(part)
            if found is None:
                return f"no file or directory {base}/{'/'.join(parts[: i + 1])} at this commit"
            node, is_tree = found.id, found.is_tree
        full = f"{base}/{'/'.join(parts)}"
        if is_tree:
            chosen = sorted(
                (e for e in self.repo.entries(node) if not e.is_tree and e.name.endswith(_YAML)),
                key=lambda e: e.name,
            )
            if not chosen:
                return f"directory {full}/ holds no .yaml or .yml file"
            named = [(f"{full}/{e.name}", e.id) for e in chosen]
        elif not full.endswith(_YAML):
            return f"{full} is not a .yaml or .yml file"
        else:
            named = [(full, node)]
        for file, blob_id in named:
            if self.repo.blob_size(blob_id) > MAX_FILE_BYTES:
                return f"{file} is larger than {MAX_FILE_BYTES // (1 << 20)} MiB"
            try:
                files[file] = self.repo.blob(blob_id).decode("utf-8")
            except UnicodeDecodeError:
                return f"{file} is not UTF-8 text"
            blob_ids[file] = blob_id
        return ""

    # -- files -------------------------------------------------------------------------

    def _doc(self, kind: str, blob_id: str) -> _Doc:
        key = (kind, blob_id)
        doc = self._docs.get(key)
        if doc is None:
            doc = self._parse(kind, blob_id)
            self._docs[key] = doc
        return doc

    def _parse(self, kind: str, blob_id: str) -> _Doc:
        self.stats.parsed_files += 1
        size = self.repo.blob_size(blob_id)
        if size > MAX_FILE_BYTES:
            message = (
                f"file is {size / (1 << 20):.1f} MiB; a config file may be at most "
                f"{MAX_FILE_BYTES // (1 << 20)} MiB"
            )
            return _Doc(None, (parsing.SyntaxProblem(1, 1, message),))
        try:
            data = parsing.parse(self.repo.blob(blob_id))
        except parsing.YamlSyntaxError as exc:
            return _Doc(None, (exc.problem,))
        if data is None:
            data = {}
        return _Doc(data, tuple(schemas.validate(kind, data)))

    def _located(
        self,
        path: str,
        blob_id: str,
        found: Iterable[schemas.SchemaProblem | parsing.SyntaxProblem],
    ) -> list[ConfigProblem]:
        out = []
        text: bytes | None = None
        for p in found:
            if isinstance(p, parsing.SyntaxProblem):
                out.append(ConfigProblem(path, p.message, p.line, p.column))
                continue
            if text is None:
                text = self.repo.blob(blob_id)
            line, column = parsing.locate(text, p.path, p.at_key)
            out.append(ConfigProblem(path, p.message, line, column, parsing.json_path(p.path)))
        return out

    def _findings(
        self, blobs: Mapping[str, str], findings: Iterable[checking.Finding]
    ) -> list[ConfigProblem]:
        out = []
        texts: dict[str, bytes] = {}
        seen: set[checking.Finding] = set()
        for f in findings:
            if f in seen:
                continue  # a project-level fault found through several environments
            seen.add(f)
            blob = blobs.get(f.file)
            if blob is None:
                out.append(ConfigProblem(f.file, f.message, 0, 0, parsing.json_path(f.path)))
                continue
            if f.file not in texts:
                texts[f.file] = self.repo.blob(blob)
            line, column = parsing.locate(texts[f.file], f.path, f.at_key)
            out.append(ConfigProblem(f.file, f.message, line, column, parsing.json_path(f.path)))
        return out


def _with_commit(desired: model.DesiredState, commit: str) -> model.DesiredState:
    return replace(desired, commit=commit)
