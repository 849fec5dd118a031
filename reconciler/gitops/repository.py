"""The Git adapter: the one module of QUIC-Flow that imports pygit2.

Everything the reconciler does with Git goes through ``GitRepository``: opening a
local repository (or a subdirectory of one), mirroring a remote URL into a cache
directory, resolving revisions, reading trees and blobs of a commit (never a working
copy), writing commits on our own refs and notes, fetching and pushing those refs.
The calls are blocking; async callers run them in a thread.

Our refs move by compare-and-set: a commit is written on top of the commit that was
read, and the ref is moved only if it still points there (``RefMoved`` otherwise).
Pushes never force: origin accepts only a fast-forward of what it has, so a push built
on an outdated read is refused (``PushRejected``) instead of overwriting what another
reconciler wrote.

Fetches never lose local history. Origin's state ref and notes are fetched into
``refs/quicflow/fetched/…``, not over ours, and then integrated (``integrate_history``):
ours is fast-forwarded when origin's is ahead, kept when ours is ahead (records not
pushed yet, or ``push_history: false``), and when the two diverged, our own commits are
replayed on top of origin's — an environment both sides recorded keeps our record and
is reported as a conflict — while notes are merged line by line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pygit2

from reconciler.errors import SourceError

_log = logging.getLogger(__name__)

STATE_REF = "refs/quicflow/state"
NOTES_REF = "refs/notes/quicflow"
CLAIMS_PREFIX = "refs/quicflow/claims/"
#: Local notes (never fetched or pushed) on the branch commits the reconciler made itself.
MADE_NOTES_REF = "refs/notes/quicflow-made"
#: Where origin's state ref and notes land when fetched: beside ours, never over them.
FETCHED_STATE_REF = "refs/quicflow/fetched/state"
FETCHED_NOTES_REF = "refs/quicflow/fetched/notes"
FETCHED = {STATE_REF: FETCHED_STATE_REF, NOTES_REF: FETCHED_NOTES_REF}
# Default refspecs carry neither our state ref nor our notes: fetch them explicitly.
HISTORY_REFSPECS = (f"+{STATE_REF}:{FETCHED_STATE_REF}", f"+{NOTES_REF}:{FETCHED_NOTES_REF}")
# Claims (one ref per environment being deployed) come along; a glob may match nothing.
CLAIMS_REFSPEC = f"+{CLAIMS_PREFIX}*:{CLAIMS_PREFIX}*"
_READ = object()  # ``base`` not given: commit on top of what the ref points at now
_REMOTE_URL = re.compile(r"^(file|git|https?|ssh)://")
# What a remote answers when the ref moved on (as opposed to declining the update).
_MOVED_ON = re.compile(r"non-fast-forward|fetch first|stale info|cannot lock ref", re.I)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """The parts of a commit that the planner, history and CLI show."""

    id: str
    author_name: str
    author_email: str
    message: str
    time: int
    parents: tuple[str, ...]

    @property
    def short_id(self) -> str:
        return self.id[:10]

    @property
    def summary(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a Git tree."""

    name: str
    id: str
    is_tree: bool


@dataclass(frozen=True, slots=True)
class Identity:
    """Who writes our commits and notes."""

    name: str = "quicflow"
    email: str = "quicflow@localhost"


def is_remote_url(location: str) -> bool:
    """True when ``location`` names a remote repository rather than a local path."""
    return bool(_REMOTE_URL.match(location))


def redact_url(url: str) -> str:
    """The URL without any user-info, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


class RefMoved(SourceError):
    """A ref no longer points at the commit a write was built on (another writer moved it)."""


class PushRejected(SourceError):
    """Origin refused a push: its ref moved on since we fetched it (not a fast-forward)."""


class PushRefused(PushRejected):
    """Origin itself declined the update (a hook, a protected ref, a read-only token):
    fetching and pushing again does not help, only a change on origin does."""


@dataclass(frozen=True, slots=True)
class Integration:
    """What integrating origin's copy of one of our refs did to ours.

    ``outcome``: ``unchanged`` (same commit, or origin has none), ``took`` (ours was
    missing or behind: now origin's), ``ahead`` (ours has commits origin lacks: kept),
    ``rebased`` (diverged: ours replayed on origin's), ``merged`` (notes: both kept),
    ``refused`` (ours could not be moved: another writer moved it meanwhile).
    """

    ref: str
    outcome: str
    ours: str | None
    theirs: str | None
    result: str | None
    ahead: int = 0
    conflicts: tuple[str, ...] = ()
    rewritten: Mapping[str, str] | None = None

    @property
    def summary(self) -> str:
        text = f"{self.ref}: {self.outcome}"
        if self.ahead:
            text += f", {self.ahead} commit{'s' if self.ahead != 1 else ''} not on origin"
        if self.conflicts:
            text += "; recorded on both sides, ours kept: " + ", ".join(self.conflicts)
        return text


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials for HTTP(S) remotes: a token (user 'x-access-token' unless given)."""

    def __init__(self, username: str | None, token: str | None):
        super().__init__()
        self._username = username
        self._token = token
        self._tries = 0
        self.rejected: dict[str, str] = {}

    def push_update_reference(self, refname, message):  # noqa: ANN001
        # A remote that refuses an update (a hook, a non-fast-forward it checked itself)
        # still makes the push call succeed: remember it and raise after the push.
        if message:
            self.rejected[refname] = message

    def credentials(self, url, username_from_url, allowed_types):  # noqa: ANN001
        # libgit2 keeps asking when credentials are refused; give up after one try
        # so a bad token fails fast instead of looping.
        self._tries += 1
        if self._tries > 1 or self._token is None:
            return None
        user = self._username or username_from_url or "x-access-token"
        return pygit2.UserPass(user, self._token)


class GitRepository:
    """A Git repository the reconciler reads from and records history in."""

    def __init__(self, repo: pygit2.Repository, subdir: str = "", remote_url: str | None = None):
        self._repo = repo
        self.subdir = subdir.strip("/")
        self.remote_url = remote_url
        self._username: str | None = None
        self._token: str | None = None
        # Held by whoever writes our refs and pushes them, and by fetches that integrate
        # origin's copies: a fetch must not land between a local write and its push.
        self.lock = threading.RLock()
        #: What the last fetch's integration of origin's history did (state ref, notes).
        self.integrations: dict[str, Integration] = {}

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        cache_dir: Path | None = None,
        token: str | None = None,
        username: str | None = None,
    ) -> GitRepository:
        """Open a local path (possibly a subdirectory of a repository) or mirror a URL."""
        text = os.fspath(location)
        if is_remote_url(text):
            return cls.mirror(text, cache_dir or Path(".quicflow") / "repos", token, username)
        path = Path(text).resolve()
        if not path.exists():
            raise SourceError(f"{text}: no such directory")
        found = pygit2.discover_repository(str(path))
        if found is None:
            raise SourceError(
                f"{text}: not inside a Git repository (run 'git init' or pass --repo)"
            )
        repo = pygit2.Repository(found)
        top = Path(repo.workdir).resolve() if repo.workdir else Path(repo.path).resolve()
        subdir = "" if repo.is_bare else path.relative_to(top).as_posix()
        return cls(repo, "" if subdir == "." else subdir)

    @classmethod
    def mirror(
        cls, url: str, cache_dir: Path, token: str | None = None, username: str | None = None
    ) -> GitRepository:
        """Clone ``url`` bare into ``cache_dir`` (or reuse the clone) and fetch it."""
        # The URL may end with '//subdir' to name a config subtree, as in Kustomize.
        subdir = ""
        scheme_end = url.find("://") + 3
        if "//" in url[scheme_end:]:
            url, subdir = (
                url[:scheme_end] + url[scheme_end:].split("//", 1)[0],
                url[scheme_end:].split("//", 1)[1],
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(redact_url(url).encode()).hexdigest()[:16]
        path = cache_dir / f"{key}.git"
        if (path / "HEAD").exists():
            repo = pygit2.Repository(str(path))
        else:
            repo = pygit2.init_repository(str(path), bare=True)
            repo.remotes.create("origin", url, "+refs/heads/*:refs/heads/*")
        self = cls(repo, subdir, remote_url=url)
        self._username, self._token = username, token
        self.fetch()
        self.follow_remote_head()
        return self

    def follow_remote_head(self) -> None:
        """Point a mirror's HEAD at the remote's default branch, so a URL without a branch
        reads what the remote calls its main line (``trunk``, ``master``, …)."""
        remote = self._remote()
        if remote is None or self.remote_url is None:
            return
        try:
            heads = remote.list_heads(callbacks=_Callbacks(self._username, self._token))
        except pygit2.GitError as exc:
            _log.warning(
                "could not read the default branch of %s: %s", redact_url(self.remote_url), exc
            )
            return
        target = next(
            (h.symref_target for h in heads if h.name == "HEAD" and h.symref_target), None
        )
        if target and self.ref_target(target) is not None:
            self._repo.set_head(target)

    @property
    def default_branch(self) -> str | None:
        """The branch HEAD names (a mirror's: the remote's default branch), if any."""
        try:
            target = self._repo.references["HEAD"].target
        except KeyError:
            return None
        return target.removeprefix("refs/heads/") if isinstance(target, str) else None

    @classmethod
    def create(
        cls, path: Path, files: Mapping[str, bytes], message: str, identity: Identity = Identity()
    ) -> tuple[GitRepository, str]:
        """A new repository at ``path`` whose first commit on ``main`` holds ``files``."""
        repo = pygit2.init_repository(str(path), initial_head="main")
        self = cls(repo)
        commit = self.commit_files("refs/heads/main", files, message, identity)
        repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
        return self, commit

    @staticmethod
    def inside_repository(path: Path) -> bool:
        """True when ``path`` is inside an existing Git work tree."""
        return pygit2.discover_repository(str(path)) is not None

    # -- remotes -----------------------------------------------------------------

    def _remote(self) -> pygit2.Remote | None:
        try:
            return self._repo.remotes["origin"]
        except KeyError:
            return None

    @property
    def has_remote(self) -> bool:
        return self._remote() is not None

    def fetch(self, include_history: bool = True) -> None:
        """Fetch branches and tags (mirrors) and always our state ref and notes."""
        remote = self._remote()
        if remote is None:
            return
        specs: list[str] = []
        if self.remote_url is not None:
            specs += ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        else:
            specs += [s for s in remote.fetch_refspecs]
        if include_history:
            specs += [CLAIMS_REFSPEC, *HISTORY_REFSPECS]
        try:
            with self.lock:
                remote.fetch(specs, callbacks=_Callbacks(self._username, self._token))
                if include_history:
                    self.integrate_history()
        except pygit2.GitError as exc:
            # A remote without our refs yet is normal; anything else is a real failure.
            message = str(exc)
            if include_history and "couldn't find remote ref" in message:
                branches = specs[: -len(HISTORY_REFSPECS) - 1]
                with self.lock:
                    remote.fetch(
                        branches or None, callbacks=_Callbacks(self._username, self._token)
                    )
                    self._fetch_history_refs_one_by_one(remote)
                    self.integrate_history()
                return
            raise SourceError(
                f"fetch from {redact_url(remote.url or '')} failed: {message}"
            ) from None

    def fetch_history(self) -> None:
        """Fetch only our state ref, notes and claims (what another reconciler may have moved)."""
        remote = self._remote()
        if remote is None:
            return
        with self.lock:
            try:
                remote.fetch(
                    [CLAIMS_REFSPEC, *HISTORY_REFSPECS],
                    callbacks=_Callbacks(self._username, self._token),
                )
            except pygit2.GitError as exc:
                if "couldn't find remote ref" not in str(exc):
                    raise SourceError(
                        f"fetch from {redact_url(remote.url or '')} failed: {exc}"
                    ) from None
                self._fetch_history_refs_one_by_one(remote)
            self.integrate_history()

    def _fetch_history_refs_one_by_one(self, remote: pygit2.Remote) -> None:
        for spec in (CLAIMS_REFSPEC, *HISTORY_REFSPECS):
            try:
                remote.fetch([spec], callbacks=_Callbacks(self._username, self._token))
            except pygit2.GitError:
                continue

    def push_history(self) -> None:
        """Push our state ref and notes to the remote, when there is one (never forced)."""
        refs = [ref for ref in (STATE_REF, NOTES_REF) if self.ref_target(ref)]
        self.push_refs(refs)
        if self.has_remote:
            # Origin has them now: what was fetched from it is what we pushed.
            for ref in refs:
                target = self.ref_target(ref)
                if target is not None:
                    self._repo.references.create(FETCHED[ref], pygit2.Oid(hex=target), force=True)

    def unpushed(self, ref: str = STATE_REF) -> int:
        """How many commits of our ``ref`` origin lacks, as of the last fetch or push."""
        ours = self.ref_target(ref)
        if ours is None or not self.has_remote:
            return 0
        theirs = self.ref_target(FETCHED[ref])
        if theirs is None:
            return sum(1 for _ in self._repo.walk(pygit2.Oid(hex=ours)))
        ahead, _ = self._repo.ahead_behind(pygit2.Oid(hex=ours), pygit2.Oid(hex=theirs))
        return int(ahead)

    # -- integrating origin's history ----------------------------------------------

    def integrate_history(self) -> dict[str, Integration]:
        """Bring what was fetched of origin's state ref and notes into ours, losing nothing.

        Called by every fetch of our refs (under ``lock``); the outcome of each ref is
        kept in ``integrations`` and logged when it is not a plain fast-forward.
        """
        with self.lock:
            state = self._integrate(STATE_REF, self._rebase)
            notes = self._integrate(NOTES_REF, self._merge_notes)
            self.integrations = {STATE_REF: state, NOTES_REF: notes}
        for found in (state, notes):
            if found.conflicts or found.outcome == "refused":
                _log.error("history from origin: %s", found.summary)
            elif found.outcome in ("rebased", "merged"):
                _log.warning(
                    "history from origin diverged from ours; %s (nothing of either was lost)",
                    found.summary,
                )
        return self.integrations

    def _integrate(self, ref: str, diverged: _Diverged) -> Integration:
        ours, theirs = self.ref_target(ref), self.ref_target(FETCHED[ref])
        if theirs is None or ours == theirs:
            ahead = self.unpushed(ref) if ours is not None and theirs is None else 0
            return Integration(ref, "unchanged", ours, theirs, ours, ahead)
        try:
            if ours is None or self._repo.descendant_of(
                pygit2.Oid(hex=theirs), pygit2.Oid(hex=ours)
            ):
                self.move_ref(ref, theirs, ours)
                return Integration(ref, "took", ours, theirs, theirs)
            if self._repo.descendant_of(pygit2.Oid(hex=ours), pygit2.Oid(hex=theirs)):
                return Integration(ref, "ahead", ours, theirs, ours, self.unpushed(ref))
            return diverged(ref, ours, theirs)
        except RefMoved as exc:
            _log.warning("%s: not integrated from origin this time: %s", ref, exc)
            return Integration(ref, "refused", ours, theirs, self.ref_target(ref))

    def _rebase(self, ref: str, ours: str, theirs: str) -> Integration:
        """Replay our commits that origin lacks on top of origin's, file by file.

        A file origin changed since the two forked and ours changed too keeps ours (what
        this reconciler did) and is reported as a conflict.
        """
        base = self._repo.merge_base(pygit2.Oid(hex=ours), pygit2.Oid(hex=theirs))
        base_files = _flatten(self._repo, self._repo[base].tree) if base is not None else {}
        their_files = _flatten(self._repo, self._repo[theirs].peel(pygit2.Commit).tree)
        changed_there = {
            path
            for path in base_files.keys() | their_files.keys()
            if base_files.get(path) != their_files.get(path)
        }
        walker = self._repo.walk(
            pygit2.Oid(hex=ours), pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
        )
        walker.hide(pygit2.Oid(hex=theirs))
        index = pygit2.Index()
        index.read_tree(self._repo[theirs].peel(pygit2.Commit).tree)
        parent, rewritten, conflicts = theirs, {}, set()
        for commit in walker:
            before = _flatten(self._repo, commit.parents[0].tree) if commit.parents else {}
            after = _flatten(self._repo, commit.tree)
            for path in before.keys() | after.keys():
                if before.get(path) == after.get(path):
                    continue
                if path in changed_there and their_files.get(path) != after.get(path):
                    conflicts.add(path)
                if path in after:
                    oid, mode = after[path]
                    index.add(pygit2.IndexEntry(path, oid, mode))
                elif path in index:
                    index.remove(path)
            tree = index.write_tree(self._repo)
            new = self._repo.create_commit(
                None,
                commit.author,
                commit.committer,
                commit.message,
                tree,
                [pygit2.Oid(hex=parent)],
            )
            parent = rewritten[str(commit.id)] = str(new)
        self.move_ref(ref, parent, ours)
        return Integration(
            ref,
            "rebased",
            ours,
            theirs,
            parent,
            len(rewritten),
            tuple(sorted(conflicts)),
            rewritten,
        )

    def _merge_notes(self, ref: str, ours: str, theirs: str) -> Integration:
        """A merge commit of both notes refs: every note of either side, lines of both kept."""
        mine = _notes_by_object(self._repo, self._repo[ours].peel(pygit2.Commit).tree)
        other = _notes_by_object(self._repo, self._repo[theirs].peel(pygit2.Commit).tree)
        builder = self._repo.TreeBuilder()
        for name in sorted(mine.keys() | other.keys()):
            a, b = mine.get(name), other.get(name)
            if a is None or b is None or a == b:
                blob = a or b
            else:
                lines = self._repo[b].data.decode(errors="replace").splitlines()
                lines += [
                    line
                    for line in self._repo[a].data.decode(errors="replace").splitlines()
                    if line not in lines
                ]
                blob = self._repo.create_blob(("\n".join(lines) + "\n").encode())
            assert blob is not None
            builder.insert(name, blob, pygit2.enums.FileMode.BLOB)
        sig = _signature(Identity())
        merged = str(
            self._repo.create_commit(
                None,
                sig,
                sig,
                "Merge notes from origin\n",
                builder.write(),
                [pygit2.Oid(hex=ours), pygit2.Oid(hex=theirs)],
            )
        )
        self.move_ref(ref, merged, ours)
        return Integration(ref, "merged", ours, theirs, merged, self.unpushed(ref))

    def push_refs(self, refs: Sequence[str]) -> None:
        """Push ``refs`` to the remote as fast-forwards only; ``PushRejected`` when origin's
        ref moved on since we read it (nothing of origin's is overwritten)."""
        remote = self._remote()
        if remote is None or not refs:
            return
        where = redact_url(remote.url or "")
        callbacks = _Callbacks(self._username, self._token)
        try:
            remote.push([f"{ref}:{ref}" for ref in refs], callbacks=callbacks)
        except pygit2.GitError as exc:
            # libgit2 checks the fast-forward itself, against origin's refs it just listed.
            message = str(exc).replace(remote.url or where, where)
            if "non-fastforwardable" in message or "not present locally" in message:
                raise PushRejected(f"push to {where} refused: {message}") from None
            raise SourceError(f"push to {where} failed: {message}") from None
        if callbacks.rejected:
            refused = "; ".join(
                f"{ref}: {why.replace(remote.url or where, where)}"
                for ref, why in sorted(callbacks.rejected.items())
            )
            if any(_MOVED_ON.search(why) for why in callbacks.rejected.values()):
                raise PushRejected(f"push to {where} refused: {refused}")
            raise PushRefused(f"push to {where} refused: {refused}")

    # -- reading -----------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._repo.path

    def resolve(self, rev: str) -> str:
        """The commit id that ``rev`` names."""
        try:
            obj = self._repo.revparse_single(rev)
            return str(obj.peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise SourceError(f"unknown revision {rev!r}") from None

    def ref_target(self, ref: str) -> str | None:
        """The commit a ref points at, or None when it does not exist."""
        try:
            return str(self._repo.references[ref].peel(pygit2.Commit).id)
        except (KeyError, pygit2.InvalidSpecError):
            return None

    def refs_under(self, prefix: str) -> list[str]:
        """The names of the refs whose name starts with ``prefix``."""
        return [name for name in self._repo.references if name.startswith(prefix)]

    def commit(self, commit_id: str) -> CommitInfo:
        """Metadata of a commit."""
        c = self._repo[commit_id]
        return CommitInfo(
            id=str(c.id),
            author_name=c.author.name,
            author_email=c.author.email,
            message=c.message,
            time=c.commit_time,
            parents=tuple(str(p) for p in c.parent_ids),
        )

    def merge_base(self, one: str, other: str) -> str | None:
        """The best common ancestor of two commits (where a branch forked), or None."""
        found = self._repo.merge_base(pygit2.Oid(hex=one), pygit2.Oid(hex=other))
        return str(found) if found is not None else None

    def commits_between(self, base: str | None, head: str) -> list[CommitInfo]:
        """Commits reachable from ``head`` but not from ``base``, oldest first."""
        walker = self._repo.walk(pygit2.Oid(hex=head), pygit2.enums.SortMode.TOPOLOGICAL)
        if base:
            walker.hide(pygit2.Oid(hex=base))
        return [self.commit(str(c.id)) for c in walker][::-1]

    def root_tree(self, commit_id: str) -> str | None:
        """The tree id of the configured subdirectory at a commit (None if absent)."""
        tree = self._repo[commit_id].peel(pygit2.Commit).tree
        if not self.subdir:
            return str(tree.id)
        try:
            entry = tree[self.subdir]
        except KeyError:
            return None
        return str(entry.id) if entry.type_str == "tree" else None

    def root_tree_of_commit(self, commit_id: str) -> str:
        """The whole repository's tree id at a commit (ignoring the config subdirectory)."""
        return str(self._repo[commit_id].peel(pygit2.Commit).tree.id)

    def export_tree(self, commit_id: str, dest: Path) -> int:
        """Write the files of the whole tree at a commit under ``dest``; return how many.

        What a checkout gives a build context (modes and symlinks kept), without a working
        copy or an index; submodules are skipped as ``git archive`` does.
        """
        count = 0
        stack = [(self._repo[commit_id].peel(pygit2.Commit).tree, Path(dest))]
        while stack:
            tree, where = stack.pop()
            where.mkdir(parents=True, exist_ok=True)
            for entry in tree:
                # A crafted tree may name entries that would escape ``dest``.
                if entry.name in ("", ".", "..", ".git") or "/" in entry.name:
                    continue
                path = where / entry.name
                if entry.type_str == "tree":
                    stack.append((self._repo[entry.id], path))
                elif entry.type_str == "blob":
                    data = self._repo[entry.id].data
                    if entry.filemode == pygit2.enums.FileMode.LINK:
                        path.symlink_to(data.decode())
                    else:
                        path.write_bytes(data)
                        if entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
                            path.chmod(0o755)
                    count += 1
        return count

    def entries(self, tree_id: str) -> list[TreeEntry]:
        """The entries of a tree."""
        tree = self._repo[tree_id]
        return [TreeEntry(e.name, str(e.id), e.type_str == "tree") for e in tree]

    def blob(self, blob_id: str) -> bytes:
        """The contents of a blob."""
        return self._repo[blob_id].data

    def blob_size(self, blob_id: str) -> int:
        """The size of a blob in bytes, without reading it."""
        return int(self._repo.get(blob_id).size)

    def changed_paths(self, old_commit: str, new_commit: str) -> list[str]:
        """Paths that differ between two commits (whole repository, POSIX paths)."""
        old = self._repo[old_commit].peel(pygit2.Commit).tree
        new = self._repo[new_commit].peel(pygit2.Commit).tree
        diff = old.diff_to_tree(new)
        paths = []
        for delta in diff.deltas:
            paths.append(delta.new_file.path)
            if delta.old_file.path != delta.new_file.path:
                paths.append(delta.old_file.path)
        return paths

    def file_history(
        self, ref: str, path: str, limit: int | None = None
    ) -> Iterator[tuple[CommitInfo, bytes | None]]:
        """Commits on ``ref`` that changed ``path``, newest first, with the file's content."""
        target = self.ref_target(ref)
        if target is None:
            return
        found = 0
        # Topological: a child before its parents, so newest first even within one second.
        for c in self._repo.walk(pygit2.Oid(hex=target), pygit2.enums.SortMode.TOPOLOGICAL):
            mine = _blob_id_at(c.tree, path)
            parent = _blob_id_at(c.parents[0].tree, path) if c.parents else None
            if mine != parent:
                data = self._repo[mine].data if mine else None
                yield self.commit(str(c.id)), data
                found += 1
                if limit is not None and found >= limit:
                    return

    # -- writing -----------------------------------------------------------------

    def commit_files(
        self,
        ref: str,
        files: Mapping[str, bytes | None],
        message: str,
        identity: Identity = Identity(),
        base: str | None | object = _READ,
    ) -> str:
        """Commit ``files`` (path → content, None deletes) on top of ``ref``; return the id."""
        return self.commit_chain(ref, [(files, message)], identity, base)[0]

    def commit_chain(
        self,
        ref: str,
        changes: Sequence[tuple[Mapping[str, bytes | None], str]],
        identity: Identity = Identity(),
        base: str | None | object = _READ,
    ) -> list[str]:
        """One commit per (files, message) on top of ``ref``, each the parent of the next.

        The ref moves once, to the last: a batch of finished runs still gets one commit
        each, at the cost of one ref update. It moves by compare-and-set: only if it
        still points at ``base`` (None: does not exist; not given: what it pointed at
        when this call read it), else ``RefMoved`` and nothing changes.
        """
        parent = self.ref_target(ref) if base is _READ else base
        assert parent is None or isinstance(parent, str)
        expected = parent
        index = pygit2.Index()
        if parent is not None:
            index.read_tree(self._repo[parent].peel(pygit2.Commit).tree)
        sig = _signature(identity)
        made: list[str] = []
        for files, message in changes:
            for path, content in files.items():
                if content is None:
                    if path in index:
                        index.remove(path)
                    continue
                oid = self._repo.create_blob(content)
                index.add(pygit2.IndexEntry(path, oid, pygit2.enums.FileMode.BLOB))
            tree = index.write_tree(self._repo)
            parents = [pygit2.Oid(hex=parent)] if parent else []
            parent = str(self._repo.create_commit(None, sig, sig, message, tree, parents))
            made.append(parent)
        if made:
            self.move_ref(ref, made[-1], expected)
        return made

    def move_ref(self, ref: str, new: str, expected: str | None) -> None:
        """Point ``ref`` at ``new`` if it points at ``expected`` now (None: it does not
        exist); ``RefMoved`` otherwise. The ref is locked (``<ref>.lock``, as git does)
        between the check and the write, so no other writer — git, libgit2, another
        reconciler on this repository — moves it in between."""
        try:
            with self._repo.transaction() as txn:
                txn.lock_ref(ref)
                try:
                    current: str | None = str(self._repo.references[ref].target)
                except KeyError:
                    current = None
                if current != expected:
                    raise RefMoved(
                        f"{ref} moved to {short(current) or 'nothing'} "
                        f"(expected {short(expected) or 'nothing'}): another writer updated it"
                    )
                txn.set_target(ref, pygit2.Oid(hex=new), message="quicflow")
        except pygit2.GitError as exc:
            # Another writer holds the lock right now: as good as having moved it.
            raise RefMoved(f"{ref} is being updated by another writer: {exc}") from None

    def read_note(
        self, commit_id: str, ref: str = NOTES_REF, at: str | None | object = _READ
    ) -> str | None:
        """The note attached to a commit under ``ref`` (as of notes commit ``at``), if any."""
        if at is _READ:
            try:
                return self._repo.lookup_note(commit_id, ref).message
            except KeyError:
                return None
        if at is None:
            return None
        assert isinstance(at, str)
        tree = self._repo[at].peel(pygit2.Commit).tree
        for path in (commit_id, f"{commit_id[:2]}/{commit_id[2:]}"):
            found = _blob_id_at(tree, path)
            if found is not None:
                return self._repo[found].data.decode(errors="replace")
        return None

    def write_note(
        self,
        commit_id: str,
        text: str,
        ref: str = NOTES_REF,
        identity: Identity = Identity(),
        base: str | None | object = _READ,
    ) -> None:
        """Attach (replace) the note of a commit under ``ref``; ``RefMoved`` when another
        writer updated the notes ref meanwhile.

        Written as a notes commit by compare-and-set like our other refs (libgit2's own
        note writing lost a concurrent writer's note now and then); a note kept in a
        fan-out directory (``ab/cdef…``, as git writes many notes) is replaced in place.
        """
        tip = self.ref_target(ref) if base is _READ else base
        assert tip is None or isinstance(tip, str)
        index = pygit2.Index()
        path = commit_id
        if tip is not None:
            tree = self._repo[tip].peel(pygit2.Commit).tree
            index.read_tree(tree)
            fanned = f"{commit_id[:2]}/{commit_id[2:]}"
            if _blob_id_at(tree, commit_id) is None and _blob_id_at(tree, fanned) is not None:
                path = fanned
        blob = self._repo.create_blob(text.encode())
        index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        sig = _signature(identity)
        parents = [pygit2.Oid(hex=tip)] if tip else []
        made = self._repo.create_commit(
            None, sig, sig, "Notes added by quicflow\n", index.write_tree(self._repo), parents
        )
        GitRepository.move_ref(self, ref, str(made), tip)

    def update_file_on_branch(
        self,
        branch: str,
        path: str,
        content: bytes,
        message: str,
        identity: Identity = Identity(),
        push: bool = False,
    ) -> str:
        """Commit one changed file on a branch (rollback-by-revert, version bumps).

        When that branch is checked out, the file in the work tree and the index follow the
        new commit — unless someone edited it locally, which is left alone — so the next
        plain ``git commit`` there does not silently undo this one.

        With ``push`` the commit is pushed to the remote (when there is one) and exists
        only if the remote took it: a refused push (protected branch, read-only token,
        network) moves the branch and the work tree back and raises ``SourceError`` — a
        commit the remote does not have would be undone by the next fetch anyway.
        """
        full = f"{self.subdir}/{path}" if self.subdir else path
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        with self.lock:  # no fetch may overwrite the branch between the commit and its push
            parent = self.ref_target(ref)
            tree = self._repo[parent].peel(pygit2.Commit).tree if parent else None
            before = _blob_id_at(tree, full) if tree is not None else None
            commit = self.commit_files(ref, {full: content}, message, identity, base=parent)
            synced = self._sync_work_tree(ref, full, before, content)
            if push and self.has_remote:
                try:
                    self.push_branch(ref.removeprefix("refs/heads/"))
                except SourceError:
                    self._undo(ref, commit, parent, full, before if synced else None)
                    raise
            self.mark_made_here(commit, message.splitlines()[0] if message else "")
        return commit

    def mark_made_here(self, commit_id: str, what: str) -> None:
        """Note (locally) that this reconciler made ``commit_id`` after its own checks."""
        try:
            self.write_note(commit_id, f"made by quicflow: {what}\n", ref=MADE_NOTES_REF)
        except RefMoved as exc:
            _log.warning("could not note %s as made here: %s", short(commit_id), exc)

    def made_here(self, commit_ids: Sequence[str]) -> frozenset[str]:
        """Which of ``commit_ids`` this reconciler made itself (``mark_made_here``)."""
        return frozenset(c for c in commit_ids if self.read_note(c, MADE_NOTES_REF) is not None)

    def _sync_work_tree(
        self, ref: str, full: str, before: pygit2.Oid | None, content: bytes
    ) -> bool:
        """Make a checked-out, locally untouched ``full`` follow its new ``content``."""
        if self._repo.is_bare or self._repo.head_is_detached or self._repo.head.name != ref:
            return False
        index = self._repo.index
        index.read()
        file = Path(self._repo.workdir) / full
        try:
            entry = index[full]
        except KeyError:
            entry = None
        untouched = (
            entry is not None
            and entry.id == before
            and file.is_file()
            and pygit2.hash(file.read_bytes()) == before
        )
        if not untouched:
            return False
        assert entry is not None
        file.write_bytes(content)
        index.add(pygit2.IndexEntry(full, self._repo.create_blob(content), entry.mode))
        index.write()
        return True

    def _undo(
        self,
        ref: str,
        commit: str,
        parent: str | None,
        full: str,
        restore: pygit2.Oid | None,
    ) -> None:
        """Take back ``commit`` (the tip of ``ref``) and, if it was synced, the work-tree file."""
        if parent is None:
            return  # a branch's first commit: nothing to go back to
        try:
            self.move_ref(ref, parent, commit)
        except RefMoved:
            return  # someone built on it already: leave it to them
        if restore is None:
            return
        content = self._repo[restore].data
        file = Path(self._repo.workdir) / full
        file.write_bytes(content)
        index = self._repo.index
        index.read()
        mode = index[full].mode
        index.add(pygit2.IndexEntry(full, restore, mode))
        index.write()

    def push_branch(self, branch: str) -> None:
        """Push one branch to the remote (after a commit made by the reconciler)."""
        remote = self._remote()
        if remote is None:
            return
        ref = f"refs/heads/{branch}"
        try:
            remote.push([f"{ref}:{ref}"], callbacks=_Callbacks(self._username, self._token))
        except pygit2.GitError as exc:
            raise SourceError(
                f"push of {branch} to {redact_url(remote.url or '')} failed: {exc}"
            ) from None


_Diverged = Callable[[str, str, str], Integration]


def _flatten(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> dict[str, tuple[pygit2.Oid, int]]:
    """Every file of ``tree``: path → (blob id, mode)."""
    files: dict[str, tuple[pygit2.Oid, int]] = {}
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.type_str == "tree":
            files.update(_flatten(repo, repo[entry.id], f"{path}/"))
        else:
            files[path] = (entry.id, entry.filemode)
    return files


def _notes_by_object(repo: pygit2.Repository, tree: pygit2.Tree) -> dict[str, pygit2.Oid]:
    """A notes tree's notes by the object they annotate (fan-out directories undone)."""
    return {path.replace("/", ""): oid for path, (oid, _) in _flatten(repo, tree).items()}


def _blob_id_at(tree: pygit2.Tree, path: str) -> pygit2.Oid | None:
    try:
        return tree[path].id
    except KeyError:
        return None


def _signature(identity: Identity) -> pygit2.Signature:
    return pygit2.Signature(identity.name, identity.email, int(time.time()), 0)


def short(commit_id: str | None) -> str:
    """A commit id shortened for people."""
    return (commit_id or "")[:10]
