"""Targets: where a run's commands go, and the vocabulary every driver speaks.

An environment names targets as ``local: NAME`` (a directory on the reconciler's own
host — the demo and tests), ``agent: NAME`` or ``selector: {labels}`` (hosts running
``quicflow agent``). Each resolved ``TargetRef`` comes with an ``Executor``: the one
way the engine runs a command there. Local targets run subprocesses; agent targets go
through the QUIC hub when it is present.
"""
