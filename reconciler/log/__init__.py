"""Live log lines: their sinks (local store, VictoriaLogs) and masking.

Every line that leaves a run — to a sink, an SSE client, a note or an export — passes
through ``masking`` first, so credential values never reach storage.  ``masking`` is
pure (no I/O); sinks are the only modules here that write anywhere. Following a log
live over server-sent events is ``reconciler.streaming`` (it needs the engine's runs and
event bus too); nothing here speaks HTTP or imports a web framework.
"""
