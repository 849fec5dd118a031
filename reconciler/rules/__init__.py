"""Pure rules shared by the config checker and the parts that act on them.

``when:`` expressions, strategy batches, release windows, branch/tag globs, the
sandboxed notification templates. Below ``gitops/``
and ``engine/`` in the layers: the checker validates with the same rules the engine
and the notifier apply, so ``quicflow validate`` rejects what a run would refuse.
Pure: no I/O, no clock reads (time comes in as a parameter), no randomness (draws come
in as parameters), no asyncio; imports only leaf modules (``reconciler.errors``,
``reconciler.events``) and ``reconciler.log.masking``.
"""
