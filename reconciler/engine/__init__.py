"""The release engine: the reconcile loop, runs, pipelines and strategies.

``reconciling`` is the orchestrator (refresh → plan → dispatch → record); beside it,
one module per job: ``refreshing`` (the desired state), ``dispatching`` (a run per
deploy action), ``lifecycle`` (start, finish, supersede, recover runs), ``running``
(one run's pipeline as a resumable step machine, ``steps``), ``strategies/``,
``recording`` (batched history in Git), ``claiming`` (one deployer per environment
across reconcilers), ``retiring`` (blue-green retirement),
``actions`` (the control actions, authorised by ``reconciler.auth.permissions``) and
``bus`` (the asyncio event bus). The pure step math it uses lives in
``reconciler.rules``. It must not speak HTTP or hold SQL: the store's repositories do.
"""
