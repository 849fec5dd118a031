"""Live log lines: their sinks (local store, VictoriaLogs), streaming to clients, and masking.

Every line that leaves a run — to a sink, an SSE client, a note or an export — passes
through ``masking`` first, so credential values never reach storage.  ``masking`` is
pure (no I/O); sinks are the only modules here that write anywhere.
"""
