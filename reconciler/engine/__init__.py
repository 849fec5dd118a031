"""The release engine: runs, pipelines and strategies (rolling, canary, blue-green).

The engine turns a plan into runs and drives each run as a resumable step machine.
Deciding and acting are kept apart: the step math here (``expressions`` for ``when:``
conditions, ``batches`` for strategy steps, ``windows`` for release windows) is pure —
no I/O, no clock reads, no randomness; time comes in as a parameter — and is
table-tested. The async orchestration beside it calls drivers and records outcomes;
only it may touch the operational store, the event bus or a target.
"""
