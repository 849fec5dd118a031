"""The operational store: every fast-changing record of QUIC-Flow, in one database.

What it holds: runs, steps and decisions (``runs``), log lines (``logs``), trigger
records and claimed webhook deliveries (``triggers``), alert records (``alerts``), the
notification outbox and its delivery attempts (``outbox``), build records and image
artifacts (``builds``), schedule state (``schedules``), API tokens and sessions
(``tokens``), sealed credentials and their audit (``credentials``). Each of those
modules is a repository: the only place the SQL of its tables is written.

Beneath them: ``database`` is the interface every backend implements (transactions,
queries, the ``qmark`` paramstyle, migrations); ``sqlite`` is the backend in use (one
WAL file in the data dir, writes inline under a lock); ``migrations`` lists the
numbered schema changes, ``legacy`` adopts data dirs from before they were numbered;
``paging`` builds every filtered, ordered, paged read and its count; ``rows`` turns a
row into its record; ``locking`` is the data dir's engine lock (one ``serve`` or ``apply``
at a time). SQL is written to run on SQLite and PostgreSQL alike, so a second
backend is one more ``Database`` subclass.

What it must not do: decide anything. It stores and answers — whether a token is still
good, an alert a repeat, a slot due or a value safe to show is for the components that
call it. It keeps no secret in clear (credentials arrive sealed, tokens as digests) and
takes from the components only the value types it stores, never their logic.
"""
