"""Pure rules shared by the config checker and the engine: ``when:`` expressions,
strategy batches, release windows and branch/tag globs.

Below ``gitops/`` and ``engine/`` in the layers: both use these rules, so the checker
can reject what the engine would refuse. Pure: no I/O, no clock reads (time comes in
as a parameter), no asyncio; imports nothing of ours but ``reconciler.errors``.
"""
