"""GitOps core: read the config repo at a commit, build the desired state, plan, record history.

Stages, each its own module: ``repository`` (the only pygit2 user) → ``parsing`` and
``schemas`` (files) → ``checking`` (across files) → ``building`` + ``merging`` (model)
→ ``loading`` (the orchestrator with its caches) → ``planning`` and ``policy`` (pure
decisions) → ``rendering`` (output) and ``history`` (state ref and notes), with
``claims`` (who deploys an environment now, by compare-and-set); ``bumping``
writes version-bump commits (webhook and API deploys, image automation) and
``reverting`` the rollback commits on top of it.

Only ``repository``, ``loading``, ``history``, ``claims``, ``scaffolding``, ``bumping``
and ``reverting`` touch Git; everything else here is pure and must stay so (see the import-linter contracts).
Nothing here imports the engine.
"""
